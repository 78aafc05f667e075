"""``nerfmine image``: fit an image with the Instant-NGP image primitive (a 2-D hash grid and an
MLP), with hard sample mining over pixels by default; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfmine.errors import NerfmineError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nerfmine.image.config import BACKEND_CHOICES, MINING_CHOICES, PRESETS

    p = subparsers.add_parser(
        "image", help="fit an image (PNG, JPEG, TIFF; EXR where imageio reads it)",
        description="Fit an image with a 2-D multiresolution hash grid and a 64-wide MLP "
                    "(the paper's image setting on a GPU; --preset cpu for a small CPU run).")
    p.add_argument("image", type=Path, nargs="?", default=None,
                   help="the image to fit (with --resume: only if it moved)")
    p.add_argument("--output", "-o", type=Path, default=None, metavar="RUN_DIR",
                   help="run folder to write (required unless --resume)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="starting values: gpu (the paper's, the default on CUDA) or cpu")
    p.add_argument("--mining", choices=MINING_CHOICES, default=None,
                   help="hsm: hard sample mining over the step's pixels (default); none")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                   help="hash grid and Adam backend (auto: triton on CUDA, torch on CPU)")
    p.add_argument("--device", default=None, help="cuda, cpu or auto (default)")
    p.add_argument("--steps", type=int, default=None, help="training steps in all")
    p.add_argument("--pixels-per-step", type=int, default=None, help="B (paper: 2^18)")
    p.add_argument("--log2-table-size", type=int, default=None, help="log2 T, 1 to 24")
    p.add_argument("--eval-every", type=int, default=None, help="steps between PSNR points")
    p.add_argument("--render-tile", type=int, default=None, help="pixels per render pass")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


_FLAGS = ("mining", "backend", "device", "steps", "pixels_per_step", "log2_table_size",
          "eval_every", "render_tile", "seed")


def run(args: argparse.Namespace) -> int:
    from nerfmine.cli.common import check_writable
    from nerfmine.fit_loop import resolve_device
    from nerfmine.image.config import make_config
    from nerfmine.image.fit import ImageFit

    overrides = {name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None}
    if args.resume is not None:
        if args.output is not None or args.preset is not None:
            raise NerfmineError("-o and --preset do not apply with --resume: the run continues "
                                "in its own folder with its own config")
        fit = ImageFit.resume(args.resume, overrides, args.image)
        print(f"resuming {args.resume} at step {fit.step} ({fit.clock:.1f} s of training "
              "clock)", flush=True)
    else:
        if args.image is None or args.output is None:
            raise NerfmineError("pass the image and a run folder: nerfmine image IMAGE -o "
                                "RUN_DIR (or --resume RUN_DIR)")
        preset = args.preset
        if preset is None:
            preset = "gpu" if resolve_device(overrides.get("device", "auto")).type == "cuda" \
                else "cpu"
        config = make_config(preset, overrides)
        check_writable(args.output)
        fit = ImageFit.create(config, args.image, args.output)
        print(f"fitting {args.image} ({fit.width}x{fit.height}) on {fit.device} (preset "
              f"{config.preset}, backend {fit.backend}, mining {config.mining}) into "
              f"{args.output}", flush=True)

    def progress(point: dict) -> None:
        if not args.quiet:
            print(f"step {point['step']}: PSNR {point['psnr']:.2f} dB at "
                  f"{point['clock']:.1f} s", flush=True)

    metrics = fit.train(progress=progress)
    print(f"done: {metrics['steps']} steps in {metrics['training_seconds']:.1f} s "
          f"({metrics['steps_per_second']:.1f} steps/s) on {metrics['device']}; PSNR "
          f"{metrics['psnr']:.2f} dB")
    print(f"outputs in {fit.run_dir}: config.json, checkpoint.pt, metrics.json, "
          "psnr_curve.png, reconstruction.png")
    return 0
