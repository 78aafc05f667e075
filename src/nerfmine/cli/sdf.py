"""``nerfmine sdf``: fit the signed distance of a mesh with the Instant-NGP SDF primitive (a 3-D
hash grid and an MLP), plain MAPE steps by default (``--mining hsm`` or ``hsm-error`` for
hard sample mining over points; see ``nerfmine.sdf.config``); ``--resume RUN_DIR`` continues a
run."""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfmine.errors import NerfmineError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nerfmine.sdf.config import BACKEND_CHOICES, MINING_CHOICES, PRESETS

    p = subparsers.add_parser(
        "sdf", help="fit the signed distance function of a mesh (OBJ, PLY, STL)",
        description="Fit the signed distance of a watertight triangle mesh with a 3-D "
                    "multiresolution hash grid and a 64-wide MLP (instant-ngp's SDF setting "
                    "on a GPU; --preset cpu for a small CPU run). Needs libigl: "
                    "pip install 'nerfmine[sdf]'.")
    p.add_argument("mesh", type=Path, nargs="?", default=None,
                   help="the mesh to fit (with --resume: only if it moved)")
    p.add_argument("--output", "-o", type=Path, default=None, metavar="RUN_DIR",
                   help="run folder to write (required unless --resume)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="starting values: gpu (instant-ngp's, the default on CUDA) or cpu")
    p.add_argument("--mining", choices=MINING_CHOICES, default=None,
                   help="none: plain MAPE steps (default: the paper's rule fails with "
                        "MAPE, see nerfmine.sdf.config); hsm: hard sample mining over the "
                        "step's points, importance |dL/dpred|; hsm-error: importance = the "
                        "point's MAPE term")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="hash grid and Adam backend (auto: triton on CUDA, torch on CPU)")
    p.add_argument("--device", default=None, help="cuda, cpu or auto (default)")
    p.add_argument("--steps", type=int, default=None, help="training steps in all")
    p.add_argument("--samples-per-step", type=int, default=None, help="B (paper: 2^18)")
    p.add_argument("--pool-size", type=int, default=None,
                   help="points with ground-truth distances drawn once per run")
    p.add_argument("--iou-points", type=int, default=None, help="uniform points of the IoU")
    p.add_argument("--log2-table-size", type=int, default=None, help="log2 T, 1 to 24")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between IoU points")
    p.add_argument("--mesh-resolution", type=int, default=None,
                   help="marching-cubes grid vertices per axis of the exported mesh")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


_FLAGS = ("mining", "backend", "device", "steps", "samples_per_step", "pool_size", "iou_points",
          "log2_table_size", "lr", "eval_every", "mesh_resolution", "seed")


def run(args: argparse.Namespace) -> int:
    from nerfmine.cli.common import check_writable
    from nerfmine.fit_loop import resolve_device
    from nerfmine.sdf.config import make_config
    from nerfmine.sdf.fit import SdfFit

    overrides = {name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None}
    if args.resume is not None:
        if args.output is not None or args.preset is not None:
            raise NerfmineError("-o and --preset do not apply with --resume: the run continues "
                                "in its own folder with its own config")
        fit = SdfFit.resume(args.resume, overrides, args.mesh)
        print(f"resuming {args.resume} at step {fit.step} ({fit.clock:.1f} s of training "
              "clock)", flush=True)
    else:
        if args.mesh is None or args.output is None:
            raise NerfmineError("pass the mesh and a run folder: nerfmine sdf MESH -o RUN_DIR "
                                "(or --resume RUN_DIR)")
        preset = args.preset
        if preset is None:
            preset = "gpu" if resolve_device(overrides.get("device", "auto")).type == "cuda" \
                else "cpu"
        config = make_config(preset, overrides)
        check_writable(args.output)
        fit = SdfFit.create(config, args.mesh, args.output)
        print(f"fitting {args.mesh} ({fit.mesh.faces.shape[0]} triangles) on {fit.device} "
              f"(preset {config.preset}, backend {fit.backend}, mining {config.mining}) into "
              f"{args.output}; ground truth took {fit.ground_truth_seconds:.1f} s", flush=True)

    def progress(point: dict) -> None:
        if not args.quiet:
            print(f"step {point['step']}: IoU {point['iou']:.4f} at {point['clock']:.1f} s",
                  flush=True)

    metrics = fit.train(progress=progress)
    print(f"done: {metrics['steps']} steps in {metrics['training_seconds']:.1f} s "
          f"({metrics['steps_per_second']:.1f} steps/s) on {metrics['device']}; IoU "
          f"{metrics['iou']:.4f}")
    mesh = f", {metrics['zero_level_set']}" if metrics["zero_level_set"] else ""
    print(f"outputs in {fit.run_dir}: config.json, checkpoint.pt, metrics.json, "
          f"iou_curve.png{mesh}")
    return 0
