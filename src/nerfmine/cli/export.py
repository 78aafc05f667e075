"""``nerfmine export``: a trained run as a coloured mesh (PLY/OBJ) and/or point cloud (PLY).

``run`` raises :class:`~nerfmine.errors.NerfmineError` for user mistakes, which
:func:`nerfmine.cli.main` prints (status 2). The meshing itself is :mod:`nerfmine.export`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from nerfmine.errors import NerfmineError

if TYPE_CHECKING:
    from nerfmine.export import ExportResult

FORMATS = ("ply", "obj")
# nerfmine.export's defaults, repeated here so that building the parser does not import torch
# (``nerfmine --help`` stays fast); tests/test_cli_robustness.py checks that they stay equal.
DEFAULT_RESOLUTION = 256
DEFAULT_THRESHOLD = 2.5
MAX_RESOLUTION = 1024


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser(
        "export", help="export a trained run as a coloured mesh and/or point cloud",
        description="Export a trained run (its EMA weights) as a coloured triangle mesh "
                    "(marching cubes on the density) and/or a coloured point cloud. Files are "
                    "written in world coordinates, the scene's own (unit cube undone).")
    p.add_argument("run_dir", type=Path, help="run folder (holds checkpoint.pt)")
    p.add_argument("--mesh", action="store_true", help="write a marching-cubes mesh")
    p.add_argument("--points", action="store_true", help="write a point cloud (PLY)")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION,
                   help=f"mesh grid vertices per axis over the box (default "
                        f"{DEFAULT_RESOLUTION}, at most {MAX_RESOLUTION})")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"density of the surface / minimum density of a point (default "
                        f"{DEFAULT_THRESHOLD}, instant-ngp's marching-cubes threshold; the same "
                        "density units: per unit length of the unit cube)")
    p.add_argument("--bbox", type=float, nargs=6, default=None,
                   metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="box to export, in world coordinates (default: the occupied cells of "
                        "the run's occupancy grid, padded by one cell)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="mesh file format (default: from --output's suffix, else ply); point "
                        "clouds are always PLY")
    p.add_argument("--n-points", type=int, default=500_000,
                   help="points in the point cloud (default 500000; fewer if the scene is "
                        "sparse)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="file to write (default: RUN_DIR/mesh.FORMAT and RUN_DIR/points.ply); "
                        "with both --mesh and --points it names the mesh and the points go "
                        "beside it as STEM_points.ply")
    return p


def _mesh_format(args: argparse.Namespace) -> str:
    suffix = args.output.suffix.lower().lstrip(".") if (args.output and args.mesh) else ""
    if args.format is not None:
        if suffix in FORMATS and suffix != args.format:
            raise NerfmineError(f"--output {args.output} ends in .{suffix} but --format is "
                                f"{args.format}; make them agree")
        return args.format
    return suffix if suffix in FORMATS else "ply"


def _outputs(args: argparse.Namespace, fmt: str) -> tuple[Path | None, Path | None]:
    """(mesh path, points path); None for what was not asked."""
    mesh_path = points_path = None
    if args.output is None:
        if args.mesh:
            mesh_path = args.run_dir / f"mesh.{fmt}"
        if args.points:
            points_path = args.run_dir / "points.ply"
        return mesh_path, points_path
    if args.mesh:
        mesh_path = args.output
        if args.points:
            points_path = args.output.with_name(f"{args.output.stem}_points.ply")
    else:
        points_path = args.output
        if args.points and args.output.suffix.lower() not in ("", ".ply"):
            raise NerfmineError(f"--output {args.output}: point clouds are written as PLY; "
                                "give a .ply file name")
    return mesh_path, points_path


def _validate(args: argparse.Namespace) -> None:
    from nerfmine.export import check_bbox, check_resolution

    if not (args.mesh or args.points):
        raise NerfmineError("nothing to export: add --mesh, --points or both")
    if args.mesh:
        check_resolution(args.resolution)
    if args.points and args.n_points < 1:
        raise NerfmineError(f"--n-points {args.n_points}: expected a positive number of points")
    if not math.isfinite(args.threshold):
        raise NerfmineError(f"--threshold {args.threshold}: expected a finite density")
    if args.points and not args.mesh and args.format == "obj":
        raise NerfmineError("--format obj: point clouds are written as PLY only; drop --format "
                            "or add --mesh")
    if args.bbox is not None:
        check_bbox(args.bbox[:3], args.bbox[3:], what="--bbox")


def _fmt_vec(v) -> str:
    import numpy as np

    return "(" + ", ".join(f"{x:.4g}" for x in np.asarray(v).tolist()) + ")"


def _report(result: ExportResult) -> None:
    what = "mesh" if result.kind == "mesh" else "point cloud"
    counts = (f"{result.n_vertices} vertices, {result.n_faces} faces" if result.kind == "mesh"
              else f"{result.n_vertices} points (of {result.candidates} drawn in occupied cells)")
    print(f"{what}: {result.path} ({counts}, density threshold {result.threshold:g})")
    print(f"  box sampled (world): {_fmt_vec(result.bbox_min_world)} to "
          f"{_fmt_vec(result.bbox_max_world)}")
    if result.extent_min_world is not None:
        print(f"  {what} extent (world): {_fmt_vec(result.extent_min_world)} to "
              f"{_fmt_vec(result.extent_max_world)}")


def run(args: argparse.Namespace) -> int:
    """Run ``nerfmine export``; prints where each file went, its counts and its box."""
    _validate(args)
    fmt = _mesh_format(args)
    mesh_path, points_path = _outputs(args, fmt)

    import numpy as np

    from nerfmine.cli.common import load_scene
    from nerfmine.export import (
        clip_to_unit_cube,
        export_mesh,
        export_point_cloud,
        occupied_bbox,
        unit_to_world,
        world_to_unit,
    )
    from nerfmine.ops.scene_box import aabb_bounds

    scene = load_scene(args.run_dir)
    scale, offset = scene.scale, np.asarray(scene.offset)
    if args.bbox is not None:
        lo_w, hi_w = np.asarray(args.bbox[:3]), np.asarray(args.bbox[3:])
        lo, hi, cut = clip_to_unit_cube(world_to_unit(lo_w, scale, offset),
                                        world_to_unit(hi_w, scale, offset),
                                        aabb_bounds(scene.aabb_scale))
        if cut:
            print(f"note: --bbox cut to the scene's unit cube, world "
                  f"{_fmt_vec(unit_to_world(lo, scale, offset))} to "
                  f"{_fmt_vec(unit_to_world(hi, scale, offset))}")
        box = (lo, hi)
    else:
        box = occupied_bbox(scene.occupancy.bitfield)

    if mesh_path is not None:
        _report(export_mesh(scene, mesh_path, resolution=args.resolution,
                            threshold=args.threshold, bbox=box, fmt=fmt))
    if points_path is not None:
        _report(export_point_cloud(scene, points_path, n_points=args.n_points,
                                   threshold=args.threshold, bbox=box))
    return 0
