"""``nerfmine sdf``: fit the signed distance of a mesh with the Instant-NGP SDF primitive (a 3-D
hash grid and an MLP), plain MAPE steps by default (``--mining hsm`` or ``hsm-error`` for
hard sample mining over points; see ``nerfmine.sdf.config``); ``--resume RUN_DIR`` continues a
run."""

from __future__ import annotations

import argparse

from nerfmine.cli.common import add_fit_arguments, run_fit


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nerfmine.sdf.config import MINING_CHOICES, PRESETS

    p = subparsers.add_parser(
        "sdf", help="fit the signed distance function of a mesh (OBJ, PLY, STL)",
        description="Fit the signed distance of a watertight triangle mesh with a 3-D "
                    "multiresolution hash grid and a 64-wide MLP (instant-ngp's SDF setting "
                    "on a GPU; --preset cpu for a small CPU run). Needs libigl: "
                    "pip install 'nerfmine[sdf]'.")
    add_fit_arguments(
        p, "mesh", PRESETS, "starting values: gpu (instant-ngp's, the default on CUDA) or cpu",
        MINING_CHOICES, "none: plain MAPE steps (default: the paper's rule fails with MAPE, see "
        "nerfmine.sdf.config); hsm: hard sample mining over the step's points, importance "
        "|dL/dpred|; hsm-error: importance = the point's MAPE term")
    p.add_argument("--samples-per-step", type=int, default=None, help="B (paper: 2^18)")
    p.add_argument("--pool-size", type=int, default=None,
                   help="points with ground-truth distances drawn once per run")
    p.add_argument("--iou-points", type=int, default=None, help="uniform points of the IoU")
    p.add_argument("--log2-table-size", type=int, default=None, help="log2 T, 1 to 24")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between IoU points (without --eval-at)")
    p.add_argument("--mesh-resolution", type=int, default=None,
                   help="marching-cubes grid vertices per axis of the exported mesh")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


_FLAGS = ("mining", "backend", "device", "steps", "seconds", "eval_at", "samples_per_step",
          "pool_size", "iou_points", "log2_table_size", "lr", "eval_every", "mesh_resolution",
          "seed")


def run(args: argparse.Namespace) -> int:
    from nerfmine.sdf.config import make_config
    from nerfmine.sdf.fit import SdfFit

    def outputs(metrics: dict) -> str:
        mesh = (f", {metrics['zero_level_set']}, {metrics['comparison']}"
                if metrics["zero_level_set"] else "")
        return f"iou_curve.png{mesh}"

    return run_fit(
        args, SdfFit, make_config, args.mesh, _FLAGS,
        usage="pass the mesh and a run folder: nerfmine sdf MESH -o RUN_DIR (or --resume "
              "RUN_DIR)",
        size=lambda fit: f"{fit.mesh.faces.shape[0]} triangles",
        note=lambda fit: f"; ground truth took {fit.ground_truth_seconds:.1f} s",
        metric=lambda value: f"IoU {value:.4f}", outputs=outputs)
