"""``nerfmine train``: train a scene (the bundled demo scene by default), optionally with the
web viewer following the run (``--view``), or continue a run (``--resume``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from nerfmine.cli.common import (
    Progress,
    add_training_flags,
    check_writable,
    default_run_dir,
    launch_ranks,
    training_overrides,
)
from nerfmine.errors import NerfmineError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nerfmine.cli.view import add_server_args

    p = subparsers.add_parser("train", help="train a scene (the bundled demo scene by default)")
    add_training_flags(p, "train")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="run folder (default: runs/<scene>-<date>-<time>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a run from its last checkpoint (the budget and evaluation "
                        "points may change)")
    p.add_argument("--view", action="store_true",
                   help="serve the web viewer while training (needs viser: pip install "
                        "'nerfmine[view]'); it keeps serving after training until Ctrl-C")
    add_server_args(p, prefix="view-")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="data-parallel training on N GPUs, one process each, started through "
                        "torchrun (on a machine without CUDA: N CPU processes); the same as "
                        "torchrun --nproc_per_node N -m nerfmine train ...")
    return p


def run(args: argparse.Namespace) -> int:
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    overrides = training_overrides(args)
    if args.gpus is not None and args.gpus < 1:
        raise NerfmineError(f"--gpus must be at least 1, got {args.gpus}")
    if args.gpus is not None and args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return launch_ranks(args.gpus, sys.argv[1:], "training",
                            "the run folder keeps its last checkpoint: continue with --resume "
                            "RUN_DIR")
    leader = _join_ranks(args)
    if args.view:  # fail before loading anything if the viewer cannot start
        from nerfmine.viewer import check_port, import_viser

        import_viser()
        check_port(args.view_host, args.view_port)
    if args.resume is not None:
        # Only what the user typed overrides the checkpoint's config; the budget and the
        # evaluation points may change, anything else must match (checked by resume).
        if args.output is not None or args.preset != "auto":
            raise NerfmineError("--output and --preset do not apply with --resume: the run "
                                "continues in its own folder with its own config")
        if overrides.get("backend") == "auto":
            del overrides["backend"]
        trainer = Trainer.resume(args.resume, overrides)
        if leader:
            for note in trainer.notes:
                print(f"note: {note}", flush=True)
            print(f"resuming {args.resume} at step {trainer.step} "
                  f"({trainer.clock:.1f} s of training clock)", flush=True)
    else:
        config = make_config(args.preset, overrides)
        run_dir = args.output or default_run_dir(config.data.path)
        if leader:  # the other ranks of a data-parallel run wait for this check
            check_writable(run_dir)
            if (run_dir / "checkpoint.pt").exists():
                raise NerfmineError(f"{run_dir} already holds a run; resume it with "
                                    f"--resume {run_dir} or choose another --output")
        _barrier()
        trainer = Trainer(config, run_dir)
        if leader:
            for note in trainer.notes:
                print(f"note: {note}", flush=True)
            print(f"training {trainer.data_root} on {config.device} (preset {config.preset}, "
                  f"backend {config.backend}, mining {config.mining}) into {run_dir}",
                  flush=True)
    progress = Progress(args.quiet or not sys.stdout.isatty() or not leader)
    if not args.view:
        try:
            metrics = trainer.train(progress=progress)
        finally:
            progress.close()
        if leader:
            print_summary(trainer.run_dir, metrics)
        return 0
    return _train_with_viewer(args, trainer, progress)


def _train_with_viewer(args: argparse.Namespace, trainer, progress: Progress) -> int:
    """Train with the web viewer in background threads; serve on after training until Ctrl-C."""
    from nerfmine.viewer import make_viewer, wait_for_interrupt

    viewer = make_viewer(trainer.scene, host=args.view_host, port=args.view_port,
                         training=True, cameras=trainer.train_data.cameras(),
                         title=f"nerfmine: {trainer.run_dir.name}")
    if trainer.device.type == "cuda":
        trainer.hooks.step_guard = viewer.renderer.share_lock()
    trainer.hooks.progress.append(viewer.on_progress)
    viewer.start()
    try:
        print(viewer.banner(), flush=True)
        try:
            metrics = trainer.train(progress=progress)
        finally:
            progress.close()
        viewer.set_status(state="training done")
        print_summary(trainer.run_dir, metrics)
        print(f"viewer: still serving {viewer.url}; Ctrl-C stops it", flush=True)
        wait_for_interrupt(viewer)
    finally:
        viewer.stop()
    print("viewer stopped", flush=True)
    return 0


def _barrier() -> None:
    """Wait for every rank of a data-parallel run (nothing alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _join_ranks(args: argparse.Namespace) -> bool:
    """Under torchrun with several processes: join the process group (NCCL or gloo); True on
    rank 0 (or alone), which prints, evaluates and writes the run folder."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return True
    if args.view:
        raise NerfmineError("--view does not apply to data-parallel training; view the run "
                            "afterwards with nerfmine view RUN_DIR")
    if args.resume is None and args.output is None:
        raise NerfmineError("data-parallel training needs --output RUN_DIR (every process "
                            "must name the same folder)")
    from nerfmine.distributed import start_process_group

    start_process_group()
    return int(os.environ.get("RANK", 0)) == 0


def print_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    hard = metrics.get("mean_hard_fraction")
    print(f"done: {metrics['steps']} steps in {metrics['training_seconds']:.1f} s of training "
          f"clock on {metrics['device']}" + (f", mean b/B {hard:.3f}" if hard else ""))
    print(f"test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
          f"({len(metrics['per_image'])} {metrics['split']} views over white)")
    print(f"outputs in {run_dir}: config.json, checkpoint.pt, metrics.json, psnr_curve.png, "
          f"renders/")
