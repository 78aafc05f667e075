"""Rendering speed on a CUDA GPU: milliseconds per frame and rays per second, both backends.

Trains DATA (default lego_400) for --seconds with the triton backend (CUDA graphs on), then
renders, with the EMA weights and each backend: the first --views test views at their own
resolution (400x400 for lego_400) and the same views at 1920x1080 (same field of view
horizontally). Each frame is timed after a warm-up render (device synchronised around it);
the median over the views is reported. Writes a JSON with the GPU name and the commit.

    PYTHONPATH=src python benchmarks/render_speed.py .devdata/lego_400 --seconds 30 \
        --out benchmarks/results/render_speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def time_frames(scene, data, backend: str, width: int, height: int, views: int) -> dict:
    from nerfmine.cameras import Cameras

    scale = width / data.width
    cameras = scene.to_unit(Cameras.pinhole(data.c2w, data.fx * scale, data.fy * scale, width,
                                            height))
    settings = dataclasses.replace(scene.render_settings, backend=backend)
    field = scene.field
    field.backend = backend
    times = []
    with scene.ema_weights(), torch.no_grad():
        scene.render(cameras, 0, settings=settings)  # warm-up: compiles kernels
        for i in range(views):
            torch.cuda.synchronize()
            start = time.perf_counter()
            scene.render(cameras, i, settings=settings)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    field.backend = scene.backend
    ms = statistics.median(times) * 1e3
    return {"backend": backend, "width": width, "height": height, "views": views,
            "median_ms_per_frame": ms, "rays_per_second": width * height / (ms / 1e3),
            "all_ms": [t * 1e3 for t in times]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.config import make_config
    from nerfmine.provenance import device_name, git_commit
    from nerfmine.trainer import Trainer

    config = make_config("gpu", {"backend": "triton", "mining": "hsm",
                                 "data": {"path": args.data},
                                 "train": {"max_seconds": args.seconds, "eval_at": []}})
    trainer = Trainer(config, Path("/tmp/render-speed"))
    metrics = trainer.train()
    report = {"gpu": device_name("cuda"), "commit": git_commit(), "torch": torch.__version__,
              "data": args.data, "trained_seconds": args.seconds, "psnr": metrics["psnr"],
              "rays_per_chunk": trainer.scene.render_settings.rays_per_chunk, "runs": []}
    data = trainer.eval_data
    for backend in ("triton", "torch"):
        for width, height in ((data.width, data.height), (1920, 1080)):
            r = time_frames(trainer.scene, data, backend, width, height, args.views)
            report["runs"].append(r)
            print(f"{report['gpu']} {backend:6s} {width}x{height}: "
                  f"{r['median_ms_per_frame']:.1f} ms/frame, "
                  f"{r['rays_per_second'] / 1e6:.1f} M rays/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
