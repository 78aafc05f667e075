"""Writes the run folders of tests/data/runs_286bf1b with nerfmine at commit 286bf1b (before
issue 14 reshaped the trainer, config and CLI): a tiny run of the bundled demo scene (mining) and
one of a tiny transforms.json capture with per-frame intrinsics, OpenCV distortion and
aabb_scale 2 (two occupancy cascades, exponential stepping), each with its evaluation renders
and a two-frame orbit render. Tests check that these folders still load, evaluate and render
the same pixels. Run from a checkout of 286bf1b:

    PYTHONPATH=src python make_old_runs.py tests/data/runs_286bf1b
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nerfmine import cli
from nerfmine.config import make_config
from nerfmine.trainer import Trainer

out = Path(sys.argv[1])
TINY = {"model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64, "hidden_dim": 16},
        "occupancy": {"resolution": 16, "update_interval": 2, "warmup_steps": 2},
        "train": {"max_steps": 6, "target_samples": 1024, "initial_rays": 64,
                  "ray_granularity": 32, "eval_max_images": 2, "checkpoint_every": 1e9,
                  "seed": 3}}


def look_at(eye):
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def write_capture(folder, w=16, h=12, n=10):
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        angle = 2 * math.pi * i / n
        eye = np.array([1.2 * math.cos(angle), 1.2 * math.sin(angle), 0.4])
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / "images" / f"{i:02d}.png")
        frames.append({"file_path": f"images/{i:02d}.png", "transform_matrix": look_at(eye),
                       "fl_x": 14.0 + 0.1 * i, "fl_y": 14.0, "cx": w / 2, "cy": h / 2,
                       "k1": 0.01 + 0.002 * i})
    meta = {"w": w, "h": h, "k1": 0.01, "aabb_scale": 2, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))


summary = {}
demo = make_config("cpu", json.loads(json.dumps(TINY)) | {"mining": "hsm"})
summary["demo_run"] = Trainer(demo, out / "demo_run").train()
write_capture(out / "capture_scene")
cap = json.loads(json.dumps(TINY))
cap["mining"] = "none"
cap["data"] = {"path": str((out / "capture_scene").resolve())}
cap["train"].update(max_steps_per_ray=128, step_size=math.sqrt(3) / 128)
summary["capture_run"] = Trainer(make_config("cpu", cap), out / "capture_run").train()
for name in ("demo_run", "capture_run"):
    extra = ["--data", str(out / "capture_scene")] if name == "capture_run" else []
    assert cli.main(["render", str(out / name), "--frames", "2", "--width", "24",
                     "--height", "18", "--outputs", "rgb,depth,alpha", "--no-video",
                     *extra]) == 0
print(json.dumps({k: {f: m[f] for f in ("psnr", "ssim", "steps", "commit")}
                  for k, m in summary.items()}, indent=1))
