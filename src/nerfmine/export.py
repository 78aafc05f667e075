"""What users take away from a trained scene: a coloured triangle mesh or a coloured point cloud.

Pipeline (``nerfmine export``):

1. :func:`sample_density_grid` evaluates the field's density sigma at the vertices of a regular
   ``R^3`` grid spanning a box of the unit cube (chunked, no gradient);
2. :func:`extract_mesh` runs marching cubes on that grid at a density threshold;
3. :func:`vertex_colours` asks the field for the colour at each vertex, looking into the surface
   (view direction = -outward normal);
4. :func:`write_ply` / :func:`write_obj` write the file.

:func:`export_point_cloud` instead draws random points inside occupied cells of the occupancy
grid, keeps those denser than the threshold and writes them, coloured, as a PLY point cloud.

Coordinates: everything in this module works in **unit-cube coordinates** (docs/design.md),
except what is written to disk: :func:`export_mesh` and :func:`export_point_cloud` convert
vertices to **world coordinates**, ``world = (unit - offset) / scale`` with the run's data
config (0.33 and 0.5 for NeRF-synthetic), so the files line up with the scene's cameras.
:func:`write_ply` and :func:`write_obj` write the coordinates they are given.

Libraries: marching cubes is scikit-image's ``skimage.measure.marching_cubes`` (Lewiner et al.):
scikit-image is already a test dependency, actively maintained and ships wheels for every
platform, whereas PyMCubes is a small single-purpose C extension with sparse releases, and
trimesh has no marching cubes of its own (``trimesh.voxel.ops.matrix_to_marching_cubes`` calls
scikit-image anyway). Mesh files are written with ``trimesh`` (well kept, pure Python on numpy),
rather than with a hand-written writer. Both are the optional extra
``pip install 'nerfmine[export]'``; without them these functions raise :class:`NerfmineError`.

Threshold: the default 2.5 is instant-ngp's marching-cubes threshold (``m_mesh.thresh``).
instant-ngp's density is, as ours, ``exp`` of the raw network output per unit length of the unit
cube, so the value carries over. A density of 2.5 over one marching step of sqrt(3)/1024 is an
opacity of about 0.4 %, but over the 1/256 of a voxel at the default resolution it already
stops 1 % of light per voxel and over 0.1 of the cube 22 %: a surface of a converged NeRF, whose
densities inside objects reach hundreds to thousands, lies well above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.errors import NerfmineError
from nerfmine.ops.scene_box import aabb_bounds
from nerfmine.scene import TrainedScene

DEFAULT_THRESHOLD = 2.5
"""Density threshold of the iso-surface (instant-ngp's marching-cubes default)."""
DEFAULT_RESOLUTION = 256
"""Grid vertices per axis (instant-ngp's default marching-cubes resolution)."""
MAX_RESOLUTION = 1024
"""Largest grid accepted: 1024^3 float32 densities are 4 GiB before marching cubes' own copies."""
DEFAULT_CHUNK = 2**18
"""Points per field evaluation."""
INSTALL_HINT = "pip install 'nerfmine[export]'"


# ---------------------------------------------------------------------- coordinates
def unit_to_world(points: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """Unit-cube coordinates -> world coordinates: ``(unit - offset) / scale``."""
    return (np.asarray(points, dtype=np.float64) - offset) / scale


def world_to_unit(points: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """World coordinates -> unit-cube coordinates: ``world * scale + offset``."""
    return np.asarray(points, dtype=np.float64) * scale + offset


# ---------------------------------------------------------------------- checks
def grid_bytes(resolution: int) -> int:
    """Bytes of the float32 density grid of ``resolution^3`` vertices."""
    return 4 * int(resolution) ** 3


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_resolution(resolution: int) -> None:
    """Raise :class:`NerfmineError` unless 2 <= resolution <= :data:`MAX_RESOLUTION`."""
    if resolution < 2:
        raise NerfmineError(
            f"--resolution {resolution}: marching cubes needs at least 2 grid vertices per axis; "
            f"try the default {DEFAULT_RESOLUTION}")
    if resolution > MAX_RESOLUTION:
        raise NerfmineError(
            f"--resolution {resolution}: the density grid alone would need "
            f"{_format_bytes(grid_bytes(resolution))} ({resolution}^3 float32 values) and "
            f"marching cubes several times more; use at most {MAX_RESOLUTION} "
            f"({_format_bytes(grid_bytes(MAX_RESOLUTION))}), or shrink --bbox around the object "
            f"and keep the default {DEFAULT_RESOLUTION}")


def check_bbox(bbox_min: Any, bbox_max: Any, what: str = "bounding box") -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """The box as two float64 [3] arrays; raise unless finite with min < max on every axis."""
    lo = np.asarray(bbox_min, dtype=np.float64).reshape(-1)
    hi = np.asarray(bbox_max, dtype=np.float64).reshape(-1)
    if lo.shape != (3,) or hi.shape != (3,):
        raise NerfmineError(f"{what}: expected 3 minimum and 3 maximum coordinates, got "
                            f"{lo.size} and {hi.size}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise NerfmineError(f"{what}: coordinates must be finite numbers")
    bad = [axis for axis, a, b in zip("xyz", lo, hi) if not a < b]
    if bad:
        raise NerfmineError(
            f"{what}: the minimum must be smaller than the maximum on every axis, but not on "
            f"{', '.join(bad)} (min {lo.tolist()}, max {hi.tolist()}); give "
            "XMIN YMIN ZMIN XMAX YMAX ZMAX")
    return lo, hi


def _require_trimesh():
    try:
        import trimesh
    except ImportError:
        raise NerfmineError(
            f"writing mesh files needs the trimesh package, which is not installed; "
            f"run: {INSTALL_HINT}") from None
    return trimesh


def _require_marching_cubes():
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise NerfmineError(
            f"mesh extraction needs scikit-image's marching cubes, which is not installed; "
            f"run: {INSTALL_HINT}") from None
    return marching_cubes


# ---------------------------------------------------------------------- density grid
@torch.no_grad()
def sample_density_grid(
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    bbox_min: Any = (0.0, 0.0, 0.0),
    bbox_max: Any = (1.0, 1.0, 1.0),
    chunk: int = DEFAULT_CHUNK,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Density at the ``resolution^3`` vertices of a regular grid over a box. # [R, R, R] float32

    Vertex (i, j, k) lies at ``bbox_min + (i, j, k) * (bbox_max - bbox_min) / (R - 1)`` (unit-cube
    coordinates; both faces of the box included), so the result is indexed ``[ix, iy, iz]``.
    ``density_fn`` maps [N, 3] float32 positions to [N] densities; it sees at most ``chunk``
    points at a time, built from their linear index, so memory is the grid plus one chunk.
    """
    check_resolution(resolution)
    lo, hi = check_bbox(bbox_min, bbox_max)
    res = int(resolution)
    device = torch.device(device) if device is not None else torch.device("cpu")
    lo_t = torch.tensor(lo, dtype=torch.float32, device=device)
    step_t = torch.tensor((hi - lo) / (res - 1), dtype=torch.float32, device=device)
    total = res**3
    out = np.empty(total, dtype=np.float32)
    for start in range(0, total, chunk):
        index = torch.arange(start, min(total, start + chunk), device=device)  # [n]
        ijk = torch.stack([index // (res * res), (index // res) % res, index % res], dim=-1)
        positions = lo_t + ijk.float() * step_t  # [n, 3]
        sigma = density_fn(positions).reshape(-1).float()
        out[start:start + index.shape[0]] = sigma.cpu().numpy()
    return out.reshape(res, res, res)


def suggest_threshold(density_grid: np.ndarray) -> tuple[float, str]:
    """A threshold strictly inside the grid's (min, max), so marching cubes yields faces.

    The 90th percentile of the densities when it separates them (it does in scenes where the
    object fills a tenth of the box or less), else the midpoint of the range. Returns the value
    and how it was chosen.
    """
    grid = np.asarray(density_grid, dtype=np.float64)
    finite = grid[np.isfinite(grid)]
    lo, hi = float(finite.min()), float(finite.max())
    value = float(np.percentile(finite, 90))
    if lo < value < hi:
        return value, "the 90th percentile of the grid's densities"
    return 0.5 * (lo + hi), "the middle of the grid's density range"


def _inside(value: float, lo: float, hi: float) -> str:
    """``value`` printed with the fewest significant digits (4 at least) that keep it strictly
    between ``lo`` and ``hi``, so a user can paste it back."""
    for digits in range(4, 18):
        text = f"{value:.{digits}g}"
        if lo < float(text) < hi:
            return text
    return repr(value)


def _no_surface_error(density_grid: np.ndarray, threshold: float, why: str) -> NerfmineError:
    grid = np.asarray(density_grid)
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    if not lo < hi:
        return NerfmineError(
            f"the density is {lo:.4g} everywhere in the box, so there is no surface at any "
            "threshold; check --bbox covers the object (the default is the occupied cells of "
            "the run's occupancy grid) and that the run was trained")
    value, how = suggest_threshold(grid)
    return NerfmineError(
        f"threshold {threshold:g} {why}: the densities in the box range from {lo:.4g} to "
        f"{hi:.4g}, and the threshold must lie strictly between them; try --threshold "
        f"{_inside(value, lo, hi)} ({how})")


# ---------------------------------------------------------------------- mesh
def extract_mesh(
    density_grid: np.ndarray, threshold: float, bbox_min: Any = (0.0, 0.0, 0.0),
    bbox_max: Any = (1.0, 1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """The iso-surface ``density = threshold`` of a grid from :func:`sample_density_grid`.

    Returns ``vertices`` [V, 3] float64 in the coordinates of the box (unit cube) and ``faces``
    [F, 3] int64, wound counter-clockwise seen from outside (the denser side is inside), so face
    normals point out of the object. Raises :class:`NerfmineError` with a suggested threshold
    when the threshold is not strictly inside the grid's density range or gives no face.
    """
    marching_cubes = _require_marching_cubes()
    grid = np.asarray(density_grid, dtype=np.float32)
    if grid.ndim != 3 or min(grid.shape) < 2:
        raise NerfmineError(f"density grid: expected a 3-d array with at least 2 vertices per "
                            f"axis, got shape {grid.shape}")
    lo, hi = check_bbox(bbox_min, bbox_max)
    if not np.isfinite(threshold):
        raise NerfmineError(f"threshold {threshold}: expected a finite density")
    gmin, gmax = float(np.nanmin(grid)), float(np.nanmax(grid))
    if threshold >= gmax:
        raise _no_surface_error(grid, threshold, "is not below the largest density in the box")
    if threshold <= gmin:
        raise _no_surface_error(grid, threshold, "is not above the smallest density in the box")
    spacing = tuple((hi - lo) / (np.asarray(grid.shape) - 1))
    try:
        verts, faces, _normals, _values = marching_cubes(grid, level=float(threshold),
                                                         spacing=spacing)
    except (ValueError, RuntimeError) as exc:
        raise _no_surface_error(grid, threshold, f"gave no surface ({exc})") from None
    if faces.shape[0] == 0:
        raise _no_surface_error(grid, threshold, "gave no faces")
    # scikit-image winds faces clockwise seen from the low-value side; our inside is dense.
    faces = np.ascontiguousarray(faces[:, ::-1], dtype=np.int64)
    return verts.astype(np.float64) + lo, faces


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals [V, 3]: sums of the adjacent faces' area-weighted normals.

    Outward for meshes from :func:`extract_mesh`; (0, 0, 0) for a vertex of no face (or of
    degenerate faces only)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]  # [F, 3, 3]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # [F, 3], |n| = 2 area
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, f[:, corner], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 0, normals / np.maximum(length, 1e-30), 0.0)


@torch.no_grad()
def vertex_colours(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    vertices_unit: np.ndarray,
    normals: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Colour [V, 3] float32 in [0, 1] of each vertex, seen from outside the surface.

    ``field(positions, directions)`` returns the raw outputs [N, 4] (docs/design.md); the colour
    is ``sigmoid(raw[:, 1:4])`` at the vertex (unit-cube coordinates) for the view direction
    ``-normal`` (a camera outside looking into the surface). Vertices with a zero normal are
    seen along -z. Evaluated in chunks of ``chunk`` vertices.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    pos = np.asarray(vertices_unit, dtype=np.float32).reshape(-1, 3)
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    if n.shape != pos.shape:
        raise ValueError(f"normals {n.shape} do not match vertices {pos.shape}")
    length = np.linalg.norm(n, axis=1, keepdims=True)
    view = np.where(length > 1e-12, -n / np.maximum(length, 1e-12), np.array([0.0, 0.0, -1.0]))
    view = view.astype(np.float32)
    out = np.empty((pos.shape[0], 3), dtype=np.float32)
    for start in range(0, pos.shape[0], chunk):
        stop = min(pos.shape[0], start + chunk)
        p = torch.from_numpy(pos[start:stop]).to(device)
        d = torch.from_numpy(view[start:stop]).to(device)
        raw = field(p, d)  # [n, 4]
        out[start:stop] = torch.sigmoid(raw[:, 1:4].float()).cpu().numpy()
    return out


# ---------------------------------------------------------------------- files
def _colours_uint8(colours: np.ndarray | None, count: int) -> np.ndarray | None:
    """[count, 3] uint8 colours from floats in [0, 1] or integers in [0, 255]."""
    if colours is None:
        return None
    c = np.asarray(colours)
    if c.shape != (count, 3):
        raise ValueError(f"colours: expected shape ({count}, 3), got {c.shape}")
    if np.issubdtype(c.dtype, np.floating):
        return (np.clip(c, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(c, 0, 255).astype(np.uint8)


def _check_faces(faces: np.ndarray, count: int) -> np.ndarray:
    f = np.asarray(faces, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces: expected shape [F, 3], got {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= count):
        raise ValueError(f"faces index vertices outside [0, {count})")
    return f


def _write_bytes(path: Path, data: bytes | str) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    except OSError as exc:
        raise NerfmineError(f"{path}: cannot write the file ({exc.strerror}); choose another "
                            "place with --output") from None
    return path


def write_ply(path: Path | str, vertices: np.ndarray, faces: np.ndarray | None = None,
              colours: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY (through trimesh): float x, y, z, uchar red, green, blue (and
    alpha = 255) per vertex when ``colours`` are given, and int vertex-index lists per face.

    ``faces=None`` writes a point cloud (vertices only). ``colours`` are floats in [0, 1] or
    integers in [0, 255]. Coordinates are written as given (see the module docstring)."""
    trimesh = _require_trimesh()
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    rgb = _colours_uint8(colours, v.shape[0])
    if faces is None:
        geometry = trimesh.PointCloud(v, colors=rgb)
    else:
        geometry = trimesh.Trimesh(v, _check_faces(faces, v.shape[0]), vertex_colors=rgb,
                                   process=False, validate=False)
    data = trimesh.exchange.ply.export_ply(geometry, encoding="binary")
    return _write_bytes(Path(path), data)


def write_obj(path: Path | str, vertices: np.ndarray, faces: np.ndarray,
              colours: np.ndarray | None = None) -> Path:
    """Wavefront OBJ (through trimesh): ``v x y z [r g b]`` lines (colours as floats in [0, 1],
    the common vertex-colour extension MeshLab and Blender read) and ``f`` lines (1-based)."""
    trimesh = _require_trimesh()
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    rgb = _colours_uint8(colours, v.shape[0])
    mesh = trimesh.Trimesh(v, _check_faces(faces, v.shape[0]), vertex_colors=rgb,
                           process=False, validate=False)
    text = trimesh.exchange.obj.export_obj(mesh, include_normals=False,
                                           include_color=rgb is not None, include_texture=False)
    return _write_bytes(Path(path), text)


# ---------------------------------------------------------------------- from a run
@dataclass
class ExportResult:
    """What :func:`export_mesh` / :func:`export_point_cloud` wrote."""

    path: Path
    kind: str  # "mesh" or "points"
    n_vertices: int
    n_faces: int
    bbox_min_world: np.ndarray  # [3] box that was sampled
    bbox_max_world: np.ndarray
    threshold: float
    extent_min_world: np.ndarray | None = None  # [3] extent of the written vertices
    extent_max_world: np.ndarray | None = None
    candidates: int = 0  # point cloud: points drawn before the threshold


def occupied_bbox(occupancy_bitfield: torch.Tensor, pad_cells: int = 1) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Unit-cube box of the occupied cells, padded by ``pad_cells`` cells and clipped to the cube.

    The whole cube when no cell is occupied. With cascades ([K, res, res, res]) the box of the
    occupied cells of every cascade, each padded by ``pad_cells`` of its own cells, clipped to
    the coarsest cascade."""
    if occupancy_bitfield.dim() == 4:
        from nerfmine.occupancy import grid_extent, occupied_cell_boxes

        ext_lo, ext_hi = grid_extent(occupancy_bitfield)
        lo_t, size = occupied_cell_boxes(occupancy_bitfield.detach().cpu())
        if lo_t.shape[0] == 0:
            return np.full(3, ext_lo), np.full(3, ext_hi)
        lo_c = lo_t.double().numpy()
        size_c = size.double().numpy()[:, None]
        lo = (lo_c - pad_cells * size_c).min(0)
        hi = (lo_c + (1 + pad_cells) * size_c).max(0)
        return np.clip(lo, ext_lo, ext_hi), np.clip(hi, ext_lo, ext_hi)
    occ = occupancy_bitfield.detach().cpu().numpy().astype(bool)
    res = np.asarray(occ.shape, dtype=np.float64)
    if not occ.any():
        return np.zeros(3), np.ones(3)
    idx = np.argwhere(occ)  # [K, 3]
    lo = (idx.min(0) - pad_cells) / res
    hi = (idx.max(0) + 1 + pad_cells) / res
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def clip_to_unit_cube(lo: np.ndarray, hi: np.ndarray,
                      bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray,
                                                                          bool]:
    """The box intersected with the scene's box ``bounds`` per axis ([0, 1]^3 for aabb_scale 1;
    the field is only defined there), and whether it was cut. Raises :class:`NerfmineError` when
    nothing is left."""
    c_lo, c_hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    if np.any(c_lo >= c_hi):
        raise NerfmineError(
            "the bounding box lies outside the scene's unit cube, where the field is not "
            "defined; give a box that overlaps it")
    return c_lo, c_hi, bool(np.any(c_lo != lo) or np.any(c_hi != hi))


def _world(scene: TrainedScene, points: np.ndarray) -> np.ndarray:
    return unit_to_world(points, scene.scale, np.asarray(scene.offset))


def export_mesh(
    scene: TrainedScene,
    path: Path | str,
    resolution: int = DEFAULT_RESOLUTION,
    threshold: float = DEFAULT_THRESHOLD,
    bbox: tuple[Any, Any] | None = None,
    fmt: str = "ply",
    chunk: int = DEFAULT_CHUNK,
) -> ExportResult:
    """Marching-cubes mesh of a trained run (EMA weights), coloured, written in world coordinates.

    ``bbox`` = (min, max) in unit-cube coordinates; default: the occupied cells of the run's
    occupancy grid, padded by one cell. ``fmt`` is "ply" or "obj"."""
    if fmt not in ("ply", "obj"):
        raise NerfmineError(f"format '{fmt}': choose ply or obj")
    check_resolution(resolution)
    _require_trimesh()  # fail before the expensive part
    lo, hi = bbox if bbox is not None else occupied_bbox(scene.occupancy.bitfield)
    lo, hi = check_bbox(lo, hi)
    field = scene.field
    with scene.ema_weights():
        grid = sample_density_grid(field.density, resolution, lo, hi, chunk, scene.device)
        vertices, faces = extract_mesh(grid, threshold, lo, hi)
        colours = vertex_colours(field, vertices, vertex_normals(vertices, faces), chunk,
                                 scene.device)
    world = _world(scene, vertices)
    writer = write_ply if fmt == "ply" else write_obj
    out = writer(path, world, faces, colours)
    return ExportResult(path=out, kind="mesh", n_vertices=len(world), n_faces=len(faces),
                        bbox_min_world=_world(scene, lo), bbox_max_world=_world(scene, hi),
                        threshold=float(threshold), extent_min_world=world.min(0),
                        extent_max_world=world.max(0))


@torch.no_grad()
def _density_normals(density_fn, points: torch.Tensor, h: float) -> torch.Tensor:
    """Outward normals -grad(sigma)/|grad(sigma)| by central differences (no autograd). # [N, 3]"""
    grads = []
    for axis in range(3):
        e = torch.zeros(3, device=points.device)
        e[axis] = h
        grads.append(density_fn(points + e) - density_fn(points - e))
    g = torch.stack(grads, dim=-1)  # [N, 3]
    return -g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sample_occupied_points(
    bitfield: torch.Tensor, n: int, generator: torch.Generator,
    bbox: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """``n`` points uniform inside the occupied cells (inside ``bbox`` if given). # [n', 3]

    Fewer than ``n`` (possibly none) when some fall outside the box."""
    res = bitfield.shape[-1]
    device = bitfield.device
    if bitfield.dim() == 4:  # cascades: cells of every cascade, each of its own size
        from nerfmine.occupancy import occupied_cell_boxes

        lo_c, size = occupied_cell_boxes(bitfield)  # [K, 3], [K]
        if size.numel() == 0:
            return torch.empty(0, 3, device=device)
        pick = torch.randint(0, size.numel(), (n,), generator=generator, device=device)
        offsets = torch.rand(n, 3, generator=generator, device=device)
        points = lo_c[pick] + offsets * size[pick, None]  # [n, 3]
        return _inside_box(points, bbox)
    cells = torch.nonzero(bitfield.reshape(-1)).reshape(-1)  # [K]
    if cells.numel() == 0:
        return torch.empty(0, 3, device=device)
    pick = cells[torch.randint(0, cells.numel(), (n,), generator=generator, device=device)]
    ijk = torch.stack([pick // (res * res), (pick // res) % res, pick % res], dim=-1)
    offsets = torch.rand(n, 3, generator=generator, device=device)
    points = (ijk.float() + offsets) / res  # [n, 3]
    return _inside_box(points, bbox)


def _inside_box(points: torch.Tensor, bbox) -> torch.Tensor:
    """The points inside ``bbox`` (all of them when it is None). # [n', 3]"""
    device = points.device
    if bbox is not None:
        lo = torch.tensor(bbox[0], dtype=torch.float32, device=device)
        hi = torch.tensor(bbox[1], dtype=torch.float32, device=device)
        points = points[((points >= lo) & (points <= hi)).all(-1)]
    return points


def export_point_cloud(
    scene: TrainedScene,
    path: Path | str,
    n_points: int = 500_000,
    threshold: float = DEFAULT_THRESHOLD,
    bbox: tuple[Any, Any] | None = None,
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    max_rounds: int = 16,
) -> ExportResult:
    """Coloured point cloud of a trained run (EMA weights), written as PLY in world coordinates.

    Draws points uniformly inside the occupied cells of the occupancy grid (and ``bbox``, unit
    cube, when given), keeps those whose density exceeds ``threshold``, in rounds of ``n_points``
    candidates until ``n_points`` are kept or ``max_rounds`` rounds were drawn (a sparse scene
    gives fewer points). Each point's colour is seen along -normal, the normal being the
    normalised negative density gradient by central differences with a step of half the finest
    hash-grid cell (at least 1/2048 of the cube)."""
    if n_points < 1:
        raise NerfmineError(f"--n-points {n_points}: expected a positive number of points")
    _require_trimesh()
    field, device = scene.field, scene.device
    box = None
    if bbox is not None:
        box = check_bbox(*bbox)
    generator = torch.Generator(device).manual_seed(seed)
    h = max(0.5 / float(scene.config.model.max_resolution), 1.0 / 2048.0)
    kept: list[torch.Tensor] = []
    n_kept = 0
    candidates = 0
    density_seen: list[torch.Tensor] = []
    with scene.ema_weights():
        for _ in range(max_rounds):
            points = sample_occupied_points(scene.occupancy.bitfield, n_points, generator, box)
            candidates += points.shape[0]
            for start in range(0, points.shape[0], chunk):
                p = points[start:start + chunk]
                sigma = field.density(p)
                if len(density_seen) < 4:
                    density_seen.append(sigma[:4096].cpu())
                p = p[sigma > threshold]
                kept.append(p)
                n_kept += p.shape[0]
            if n_kept >= n_points or n_kept == 0:  # done, or hopeless at this threshold
                break
        if n_kept == 0:
            raise _no_points_error(threshold, density_seen, candidates)
        points = torch.cat(kept)[:n_points]
        normals = torch.cat([_density_normals(field.density, points[s:s + chunk], h)
                             for s in range(0, points.shape[0], chunk)])
        colours = vertex_colours(field, points.cpu().numpy(), normals.cpu().numpy(), chunk,
                                 device)
    unit = points.cpu().numpy().astype(np.float64)
    world = _world(scene, unit)
    out = write_ply(path, world, None, colours)
    if box is not None:
        lo, hi = box
    else:
        b_lo, b_hi = aabb_bounds(scene.aabb_scale)
        lo, hi = np.full(3, b_lo), np.full(3, b_hi)
    return ExportResult(path=out, kind="points", n_vertices=len(world), n_faces=0,
                        bbox_min_world=_world(scene, lo), bbox_max_world=_world(scene, hi),
                        threshold=float(threshold), extent_min_world=world.min(0),
                        extent_max_world=world.max(0), candidates=candidates)


def _no_points_error(threshold: float, density_seen: list[torch.Tensor],
                     candidates: int) -> NerfmineError:
    if candidates == 0:
        return NerfmineError(
            "no occupied cell of the run's occupancy grid lies in the bounding box, so there is "
            "nothing to sample; widen --bbox (or omit it) or check that the run was trained")
    sigma = torch.cat(density_seen).numpy() if density_seen else np.zeros(1)
    # The mean density of the points drawn from occupied cells: about half of them pass it.
    value = _inside(float(sigma.mean()), float(sigma.min()), float(sigma.max()))
    return NerfmineError(
        f"threshold {threshold:g}: none of {candidates} points drawn in occupied cells is denser "
        f"(their densities range from {sigma.min():.4g} to {sigma.max():.4g}); try --threshold "
        f"{value} (the mean density of those points)")
