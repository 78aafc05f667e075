"""Mesh and point-cloud export: a known analytic sphere, file round trips, the CLI on a tiny run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nerfmine.errors import ConfigError, NerfmineError
from nerfmine.export import (
    check_bbox,
    check_resolution,
    extract_mesh,
    sample_density_grid,
    unit_to_world,
    vertex_colours,
    vertex_normals,
    world_to_unit,
    write_obj,
    write_ply,
)

trimesh = pytest.importorskip("trimesh")

CENTRE = torch.tensor([0.5, 0.5, 0.5])
RADIUS = 0.3
COLOUR = (0.2, 0.6, 0.9)  # sigmoid of the raw colour the stand-in returns


class SphereField(nn.Module):
    """Stand-in for NGPField: density 10 sigmoid(50 (r - |x - c|)) (10 inside, ~0 outside,
    5 exactly on the sphere) and one colour everywhere; records the directions it was asked."""

    def __init__(self, radius: float = RADIUS):
        super().__init__()
        self.radius = radius
        self.last_directions: torch.Tensor | None = None

    @torch.no_grad()
    def density(self, positions: torch.Tensor) -> torch.Tensor:
        dist = (positions - CENTRE.to(positions)).norm(dim=-1)
        return 10.0 * torch.sigmoid(50.0 * (self.radius - dist))

    def forward(self, positions: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        self.last_directions = directions.clone()
        c = torch.logit(torch.tensor(COLOUR))
        raw = torch.empty(positions.shape[0], 4)
        raw[:, 0] = self.density(positions).log()
        raw[:, 1:] = c
        return raw


RES = 48
VOXEL = 1.0 / (RES - 1)


@pytest.fixture(scope="module")
def sphere_mesh():
    field = SphereField()
    grid = sample_density_grid(field.density, RES, (0, 0, 0), (1, 1, 1), chunk=5000)
    vertices, faces = extract_mesh(grid, 5.0, (0, 0, 0), (1, 1, 1))
    return field, grid, vertices, faces


def _edge_counts(faces: np.ndarray) -> np.ndarray:
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.sort(edges, axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return counts


# ---------------------------------------------------------------------- density grid
def test_density_grid_vertices_span_the_box_and_chunking_is_invisible():
    seen = []

    def density(p):
        seen.append(p.clone())
        return p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2]

    lo, hi = (0.2, 0.3, 0.4), (0.6, 0.5, 0.9)
    grid = sample_density_grid(density, 5, lo, hi, chunk=7)
    assert grid.shape == (5, 5, 5) and grid.dtype == np.float32
    assert all(p.shape[0] <= 7 for p in seen)
    axes = [np.linspace(a, b, 5) for a, b in zip(lo, hi)]
    expected = (axes[0][:, None, None] + 10 * axes[1][None, :, None]
                + 100 * axes[2][None, None, :])
    np.testing.assert_allclose(grid, expected, rtol=1e-5)
    np.testing.assert_allclose(sample_density_grid(density, 5, lo, hi), grid)


# ---------------------------------------------------------------------- the sphere
def test_sphere_mesh_radius_within_half_a_voxel(sphere_mesh):
    _, _, vertices, faces = sphere_mesh
    dist = np.linalg.norm(vertices - 0.5, axis=1)
    assert abs(dist.mean() - RADIUS) < 0.5 * VOXEL
    assert np.all(np.abs(dist - RADIUS) < VOXEL)
    assert vertices.shape[1] == 3 and faces.shape[1] == 3
    assert np.issubdtype(faces.dtype, np.integer)


def test_sphere_mesh_is_closed_genus_zero_and_outward(sphere_mesh):
    _, _, vertices, faces = sphere_mesh
    assert np.all(_edge_counts(faces) == 2)  # watertight: every edge in exactly two faces
    n_edges = len(_edge_counts(faces))
    assert len(vertices) - n_edges + len(faces) == 2  # Euler characteristic of a sphere
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.euler_number == 2
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.03)  # > 0: outward
    normals = vertex_normals(vertices, faces)
    assert np.all(np.sum(normals * (vertices - 0.5), axis=1) > 0)


def test_vertex_colours_look_into_the_surface(sphere_mesh):
    field, _, vertices, faces = sphere_mesh
    normals = vertex_normals(vertices, faces)
    colours = vertex_colours(field, vertices, normals, chunk=300)
    assert colours.shape == (len(vertices), 3) and colours.dtype == np.float32
    np.testing.assert_allclose(colours, np.tile(COLOUR, (len(vertices), 1)), atol=1e-6)
    # The last chunk's view directions point at the centre (into the sphere), unit length.
    d = field.last_directions.numpy()
    tail = vertices[-len(d):]
    inward = (0.5 - tail) / np.linalg.norm(0.5 - tail, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(d * inward, axis=1) > 0.95)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("threshold", [10.5, 0.0, -1.0, 1e9])
def test_threshold_outside_the_grid_range_suggests_a_value(sphere_mesh, threshold):
    _, grid, _, _ = sphere_mesh
    with pytest.raises(NerfmineError, match=r"try --threshold [0-9.e+-]+") as info:
        extract_mesh(grid, threshold)
    message = str(info.value)
    suggested = float(message.split("try --threshold ")[1].split()[0])
    assert grid.min() < suggested < grid.max()
    vertices, faces = extract_mesh(grid, suggested)  # the suggestion works
    assert len(faces) > 0


def test_constant_grid_has_no_surface():
    with pytest.raises(NerfmineError, match="everywhere"):
        extract_mesh(np.ones((4, 4, 4), np.float32), 0.5)


def test_bad_resolution_and_bbox_are_explained():
    with pytest.raises(NerfmineError, match="at least 2"):
        check_resolution(1)
    with pytest.raises(NerfmineError, match=r"GiB"):
        check_resolution(5000)
    with pytest.raises(NerfmineError, match="smaller than the maximum.*y"):
        check_bbox((0, 0.5, 0), (1, 0.5, 1))
    with pytest.raises(NerfmineError, match="smaller"):
        sample_density_grid(lambda p: p[:, 0], 4, (1, 0, 0), (0, 1, 1))


# ---------------------------------------------------------------------- files
def test_ply_and_obj_round_trip(sphere_mesh, tmp_path):
    field, _, vertices, faces = sphere_mesh
    colours = vertex_colours(field, vertices, vertex_normals(vertices, faces))
    rgb = (np.asarray(COLOUR) * 255 + 0.5).astype(np.uint8)

    ply = write_ply(tmp_path / "sphere.ply", vertices, faces, colours)
    assert ply.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    mesh = trimesh.load(ply, process=False)
    assert mesh.vertices.shape == vertices.shape and mesh.faces.shape == faces.shape
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)  # float32 on disk
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.visual.vertex_colors[:, :3], np.tile(rgb, (len(vertices),
                                                                                   1)))

    obj = write_obj(tmp_path / "sphere.obj", vertices, faces, colours)
    first_v = next(line for line in obj.read_text().splitlines() if line.startswith("v "))
    assert len(first_v.split()) == 7  # v x y z r g b
    mesh = trimesh.load(obj, process=False)
    assert len(mesh.vertices) == len(vertices) and len(mesh.faces) == len(faces)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3].astype(int),
                               np.tile(rgb, (len(vertices), 1)), atol=1)

    cloud = write_ply(tmp_path / "points.ply", vertices, None, colours)
    header = cloud.read_bytes().split(b"end_header")[0]
    assert b"element face" not in header and b"property uchar red" in header
    points = trimesh.load(cloud)
    assert len(points.vertices) == len(vertices)
    np.testing.assert_array_equal(points.colors[:, :3], np.tile(rgb, (len(vertices), 1)))


def test_missing_trimesh_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_trimesh(name, *args, **kwargs):
        if name == "trimesh" or name.startswith("trimesh."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trimesh)
    with pytest.raises(NerfmineError, match=r"pip install 'nerfmine\[export\]'"):
        write_ply(tmp_path / "x.ply", np.zeros((3, 3)), np.array([[0, 1, 2]]))


# ---------------------------------------------------------------------- coordinates
def test_world_coordinates_undo_the_unit_cube():
    unit = np.array([[0.5, 0.5, 0.5], [0.83, 0.5, 0.17], [0.0, 1.0, 0.5]])
    world = unit_to_world(unit, 0.33, 0.5)
    np.testing.assert_allclose(world, [[0, 0, 0], [1, 0, -1], [-0.5 / 0.33, 0.5 / 0.33, 0]])
    np.testing.assert_allclose(world_to_unit(world, 0.33, 0.5), unit)


# ---------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("export") / "run"
    # The brief's tiny run, with the demo images shrunk 4x so its one evaluation render is cheap.
    config = make_config("cpu", {
        "data": {"downscale": 4},
        "model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
        "occupancy": {"resolution": 32},
        "train": {"max_steps": 3, "target_samples": 2048, "initial_rays": 128},
        "eval": {"max_images": 1}})
    Trainer(config, run_dir).train()
    return run_dir


def _parse(argv: list[str]) -> argparse.Namespace:
    from nerfmine.cli import export as export_cli

    parser = argparse.ArgumentParser(prog="nerfmine")
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_exports_points_and_mesh_of_a_tiny_run(tiny_run, tmp_path, capsys):
    from nerfmine.cli import export as export_cli
    from nerfmine.export import occupied_bbox
    from nerfmine.scene import TrainedScene

    trainer = TrainedScene.load(tiny_run)
    lo, hi = occupied_bbox(trainer.occupancy.bitfield)
    with trainer.ema_weights():
        grid = sample_density_grid(trainer.field.density, 32, lo, hi)
    threshold = float(np.percentile(grid, 70))

    points = tmp_path / "cloud.ply"
    args = _parse(["export", str(tiny_run), "--points", "--n-points", "2000", "--threshold",
                   f"{threshold}", "--output", str(points)])
    assert export_cli.run(args) == 0
    out = capsys.readouterr().out
    assert str(points) in out and "points" in out and "world" in out
    cloud = trimesh.load(points)
    assert 0 < len(cloud.vertices) <= 2000
    scale, offset = trainer.config.data.scale, trainer.config.data.offset
    unit = world_to_unit(cloud.vertices, scale, offset)
    assert np.all(unit > -1e-5) and np.all(unit < 1 + 1e-5)  # world coordinates on disk

    mesh_path = tmp_path / "mesh.obj"
    args = _parse(["export", str(tiny_run), "--mesh", "--resolution", "32", "--threshold",
                   f"{threshold}", "--output", str(mesh_path)])
    assert export_cli.run(args) == 0
    out = capsys.readouterr().out
    assert str(mesh_path) in out and "vertices" in out and "faces" in out
    mesh = trimesh.load(mesh_path, process=False)
    assert len(mesh.faces) > 0
    n_v, n_f = (int(s) for s in out.split("(")[1].split(" faces")[0].split(" vertices, "))
    assert (len(mesh.vertices), len(mesh.faces)) == (n_v, n_f)
    unit = world_to_unit(mesh.vertices, scale, offset)
    assert np.all(unit >= lo - 1e-4) and np.all(unit <= hi + 1e-4)


def test_cli_explains_bad_input(tiny_run, tmp_path):
    from nerfmine.cli import export as export_cli

    def run(*extra):
        return export_cli.run(_parse(["export", str(tiny_run), *extra]))

    with pytest.raises(NerfmineError, match="--mesh, --points"):
        run()
    with pytest.raises(NerfmineError, match="at least 2"):
        run("--mesh", "--resolution", "1")
    with pytest.raises(NerfmineError, match="GiB"):
        run("--mesh", "--resolution", "100000")
    with pytest.raises(NerfmineError, match="--bbox.*smaller"):
        run("--mesh", "--bbox", "0", "0", "0", "1", "-1", "1")
    with pytest.raises(NerfmineError, match="try --threshold"):
        run("--mesh", "--resolution", "8", "--threshold", "1e6", "-o", str(tmp_path / "m.ply"))
    with pytest.raises(NerfmineError, match="try --threshold"):
        run("--points", "--n-points", "100", "--threshold", "1e6", "-o",
            str(tmp_path / "p.ply"))
    with pytest.raises(ConfigError, match="no such run folder"):
        export_cli.run(_parse(["export", str(tmp_path / "missing"), "--mesh"]))
