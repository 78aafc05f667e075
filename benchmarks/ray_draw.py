"""Time a training step's ray drawing on a capture: pixel centres through the cameras' table of
undistorted centres against random points of pixels, whose lens is inverted per ray.

With a lens (OpenCV or fisheye coefficients, as instant-ngp's fox has), a ray through a random
point of a pixel undoes the distortion by ~20 float64 Newton iterations, launched op by op:
hundreds of small kernels a step. Rays through pixel centres (the default) look the
undistorted coordinates up in a per-lens table instead (``Cameras.centre_table``). This script
draws ``--rays`` rays ``--repeats`` times each way and reports the median time per draw, the
number of operators the profiler records in one draw, and the table's build time and size.

    PYTHONPATH=src python benchmarks/ray_draw.py ../shared/data/fox --device cuda \
        --out benchmarks/results/ray_draw_fox.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(data: str, device: str, rays: int, repeats: int) -> dict:
    """Both ways of drawing ``rays`` rays of the training split of ``data`` on ``device``."""
    from nerfmine.data.loader import load_scene
    from nerfmine.data.rays import RaySampler

    dev = torch.device(device)
    scene = load_scene(data, "train")
    cameras = scene.cameras()
    out = {"camera_model": cameras.model, "cameras": len(cameras),
           "image": [cameras.width, cameras.height], "rays": rays, "arms": {}}
    for arm, subpixel in (("newton_per_ray", True), ("centre_table", False)):
        _sync(dev)
        start = time.perf_counter()
        sampler = RaySampler(scene.images, cameras, dev, subpixel=subpixel)
        _sync(dev)
        build = time.perf_counter() - start
        generator = torch.Generator(device=dev).manual_seed(0)
        for step in range(3):  # warm-up
            sampler.draw(rays, generator, step)
        with torch.profiler.profile() as prof:
            sampler.draw(rays, generator, 3)
        ops = sum(e.count for e in prof.key_averages())
        times = []
        for step in range(4, 4 + repeats):
            _sync(dev)
            start = time.perf_counter()
            sampler.draw(rays, generator, step)
            _sync(dev)
            times.append(time.perf_counter() - start)
        table = None if subpixel else sampler.cameras.centre_table()
        out["arms"][arm] = {
            "median_draw_ms": 1e3 * statistics.median(times),
            "profiled_ops_per_draw": ops,
            "sampler_init_s": build,
            "table_bytes": None if table is None else table[1].numel() * 4,
            "table_lenses": None if table is None else int(table[1].shape[0]),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rays", type=int, default=1 << 16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    result = {"device": device_name(args.device), "commit": git_commit(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "data": args.data,
              **measure(args.data, args.device, args.rays, args.repeats)}
    for arm, r in result["arms"].items():
        print(f"{result['device']} {arm:15s} {r['median_draw_ms']:8.3f} ms per draw of "
              f"{args.rays} rays, {r['profiled_ops_per_draw']} operators, sampler init "
              f"{r['sampler_init_s']:.3f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
