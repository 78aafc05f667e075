"""``nerfmine image``: fit an image with the Instant-NGP image primitive (a 2-D hash grid and an
MLP), with hard sample mining over pixels by default; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

import argparse

from nerfmine.cli.common import add_fit_arguments, run_fit


def add_parser(subparsers) -> argparse.ArgumentParser:
    from nerfmine.image.config import MINING_CHOICES, PIXELS_ON_CHOICES, PRESETS

    p = subparsers.add_parser(
        "image", help="fit an image (PNG, JPEG, TIFF, .npy; EXR where imageio reads it)",
        description="Fit an image with a 2-D multiresolution hash grid and a 64-wide MLP "
                    "(the paper's image setting on a GPU; --preset cpu for a small CPU run).")
    add_fit_arguments(
        p, "image", PRESETS, "starting values: gpu (the paper's, the default on CUDA) or cpu",
        MINING_CHOICES, "hsm: hard sample mining over the step's pixels (default); none")
    p.add_argument("--pixels-per-step", type=int, default=None, help="B (paper: 2^18)")
    p.add_argument("--log2-table-size", type=int, default=None, help="log2 T, 1 to 24")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between PSNR points (without --eval-at)")
    p.add_argument("--render-tile", type=int, default=None, help="pixels per render pass")
    p.add_argument("--pixels-on", choices=PIXELS_ON_CHOICES, default=None,
                   help="where the target pixels live: device, host (images larger than the "
                        "GPU's memory; a .npy file is memory-mapped) or auto (default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


_FLAGS = ("mining", "backend", "device", "steps", "seconds", "eval_at", "pixels_per_step",
          "log2_table_size", "eval_every", "render_tile", "pixels_on", "seed")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from nerfmine.image.config import make_config
    from nerfmine.image.fit import ImageFit

    # The user names the image: a gigapixel photograph is no decompression bomb (this
    # process reads no other image it did not ask for).
    Image.MAX_IMAGE_PIXELS = None

    return run_fit(
        args, ImageFit, make_config, args.image, _FLAGS,
        usage="pass the image and a run folder: nerfmine image IMAGE -o RUN_DIR (or --resume "
              "RUN_DIR)",
        size=lambda fit: f"{fit.width}x{fit.height}",
        metric=lambda value: f"PSNR {value:.2f} dB",
        outputs=lambda metrics: "psnr_curve.png, reconstruction.png, crops.png")
