"""Ablation probe: how much each setting moves test PSNR at a fixed number of steps.

Trains the scene once per variant (the gpu preset plus the variant's overrides, same seed,
mining off unless the variant says otherwise) for --steps steps, then evaluates the EMA weights
on the first --eval-images test views and on the first --train-images training views (a gap
between the two says the model fits views it cannot generalise to). Writes one JSON.

    PYTHONPATH=src python benchmarks/quality_probe.py .devdata/lego_400 --steps 10000 \
        --variants default,lr_const,scale_0.4 --out results/probe.json

Each variant is a name from VARIANTS: nested config overrides, plus ``scene_scale`` (the
world-to-unit-cube scale applied to the loaded poses instead of the scene's own). Overrides
apply on top of the defaults of the commit a result file names (4ac3f14 changed two of them:
l2_reg 0 and rays through pixel centres).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch

VARIANTS: dict[str, dict] = {
    "default": {},
    "hsm": {"mining": "hsm"},
    "lr_const": {"optim": {"lr_milestones": []}},
    "lr_4e-3_const": {"optim": {"lr": 0.004, "lr_milestones": []}},
    "scale_0.4": {"scene_scale": 0.4},
    "step_half": {"occupancy": {"step_size": math.sqrt(3) / 2048},
                  "march": {"step_size": math.sqrt(3) / 2048, "max_steps_per_ray": 2048}},
    "samples_2^19": {"train": {"target_samples": 1 << 19}},
    "fp32_mlp": {"train": {"mixed_precision": False}},
    "table_2^21": {"model": {"log2_table_size": 21}},
    "occ_thresh_1e-3": {"occupancy": {"threshold": 0.001}},
    "res_4096": {"model": {"max_resolution": 4096}},
    "no_ema": {"optim": {"ema_decay": 0.0}},
    "no_l2_lr_const": {"optim": {"l2_reg": 0.0, "lr_milestones": []}},
    "no_l2_lr_const_ema0.99": {"optim": {"l2_reg": 0.0, "lr_milestones": [], "ema_decay": 0.99}},
    "no_l2_lr_const_ema0.995": {"optim": {"l2_reg": 0.0, "lr_milestones": [], "ema_decay": 0.995}},
    "no_l2_samples_2^19": {"train": {"target_samples": 1 << 19}, "optim": {"l2_reg": 0.0}},
    "no_l2_table_2^21": {"model": {"log2_table_size": 21}, "optim": {"l2_reg": 0.0}},
    "no_l2_hsm": {"mining": "hsm", "optim": {"l2_reg": 0.0}},
    "no_l2_lr_4e-3": {"optim": {"lr": 0.004, "l2_reg": 0.0}},
    "l2_1e-7": {"optim": {"l2_reg": 1e-07}},
    "no_l2_centres": {"train": {"subpixel": False}, "optim": {"l2_reg": 0.0}},
    "no_l2_lr_4e-3_ema0.995": {"optim": {"lr": 0.004, "l2_reg": 0.0, "ema_decay": 0.995}},
    "no_l2_lr_4e-3_hsm": {"mining": "hsm", "optim": {"lr": 0.004, "l2_reg": 0.0}},
    "no_l2_lr_4e-3_centres": {"train": {"subpixel": False}, "optim": {"lr": 0.004, "l2_reg": 0.0}},
    # Against the defaults of 4ac3f14 onwards (no L2, rays through pixel centres):
    "l2_1e-6": {"optim": {"l2_reg": 1e-06}},
    "hsm_unchunked": {"mining": "hsm",
                      "train": {"first_pass_chunk": 1 << 18, "second_pass_chunk": 1 << 18}},
    "hsm_chunks_2^17": {"mining": "hsm",
                        "train": {"first_pass_chunk": 1 << 17, "second_pass_chunk": 1 << 17}},
    "subpixel": {"train": {"subpixel": True}},
    "hsm_subpixel": {"mining": "hsm", "train": {"subpixel": True}},
    "hsm_table_2^21": {"mining": "hsm", "model": {"log2_table_size": 21}},
    "hsm_fused_mlp": {"mining": "hsm", "train": {"fused_inference_mlp": True}},
    "hsm_res_1024": {"mining": "hsm", "model": {"max_resolution": 1024}},
    "hsm_res_768": {"mining": "hsm", "model": {"max_resolution": 768}},
    "hsm_res_512": {"mining": "hsm", "model": {"max_resolution": 512}},
    "hsm_fused_res_1024": {"mining": "hsm", "model": {"max_resolution": 1024},
                           "train": {"fused_inference_mlp": True}},
    "hsm_fused_res_768": {"mining": "hsm", "model": {"max_resolution": 768},
                          "train": {"fused_inference_mlp": True}},
    "hsm_fused_res_512": {"mining": "hsm", "model": {"max_resolution": 512},
                          "train": {"fused_inference_mlp": True}},
    "hsm_fused_res_384": {"mining": "hsm", "model": {"max_resolution": 384},
                          "train": {"fused_inference_mlp": True}},
    "hsm_fused_res_256": {"mining": "hsm", "model": {"max_resolution": 256},
                          "train": {"fused_inference_mlp": True}},
    "res_2048": {"model": {"max_resolution": 2048}},
    "hsm_res_2048": {"mining": "hsm", "model": {"max_resolution": 2048}},
    "hsm_res_528": {"mining": "hsm", "model": {"max_resolution": 528}},
    "res_1024": {"model": {"max_resolution": 1024}},
    "hsm_occ_thresh_0.03": {"mining": "hsm", "occupancy": {"threshold": 0.03}},
    "occ_every_step": {"occupancy": {"update_interval": 1}},
    "no_l2": {"optim": {"l2_reg": 0.0}},
    "scale_0.4_step_half": {"scene_scale": 0.4, "occupancy": {"step_size": math.sqrt(3) / 2048},
                            "march": {"step_size": math.sqrt(3) / 2048, "max_steps_per_ray": 2048}},
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _views(scene, keep: list[int]):
    """``scene`` reduced to the views ``keep`` (every per-view field)."""
    index = torch.tensor(keep, dtype=torch.long)
    for name in ("images", "c2w", "intrinsics", "distortion", "sharpness"):
        value = getattr(scene, name)
        if value is not None:
            setattr(scene, name, value[index])
    scene.image_paths = [scene.image_paths[i] for i in keep]
    return scene


def run_variant(name: str, data: str | None, steps: int | None, eval_images: int,
                train_images: int, run_dir: Path, graphs: bool, preset: str = "gpu",
                seconds: float | None = None, validation_every: int | None = None) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.data import holdout_indices, load_scene
    from nerfmine.evaluator import Evaluator
    from nerfmine.trainer import Trainer, resolve_data_path

    spec = json.loads(json.dumps(VARIANTS[name]))
    scene_scale = spec.pop("scene_scale", None)
    overrides = {"mining": "none", "data": {"path": data},
                 "train": {**({"max_seconds": seconds} if seconds else {"max_steps": steps}),
                           "seed": 0, "cuda_graphs": graphs},
                 "eval": {"save_renders": False, "max_images": eval_images}}
    config = make_config(preset, merge_overrides(overrides, spec))
    d = config.data

    def load(split: str):
        scene = load_scene(resolve_data_path(config), split, d.downscale,
                           holdout_every=d.holdout_every, skip_missing=d.skip_missing,
                           min_sharpness=d.min_sharpness)
        if scene_scale is not None:
            scene.scale = scene_scale
        return scene

    train_views = load(d.train_split)
    if validation_every:
        # Validation: every N-th training view (the loaders' hold-out rule), never trained on;
        # the test split is not looked at, so a setting chosen here is not chosen on the test
        # views.
        everything = train_views
        train_views = _views(load(d.train_split), holdout_indices(
            len(everything), "train", validation_every, "--validation-every", "training view"))
        tested = _views(everything, holdout_indices(
            len(everything), "test", validation_every, "--validation-every", "training view"))
    else:
        tested = load(d.eval_split)
    trainer = Trainer(config, run_dir, train_data=train_views)
    _sync()
    start = time.perf_counter()
    if seconds:  # the training clock, as Trainer.train keeps it (the lr schedule reads it)
        while trainer.clock < seconds:
            trainer.train_step()
            if trainer.step % 64 == 0:
                _sync()
            trainer.clock = time.perf_counter() - start
    else:
        for _ in range(steps):
            trainer.train_step()
    _sync()
    elapsed = time.perf_counter() - start
    test = Evaluator(trainer.scene, tested, eval_images).evaluate()
    train = Evaluator(trainer.scene, train_views, train_images).evaluate()
    occupied = float(trainer.occupancy.bitfield.float().mean())
    steps = trainer.step
    return {"variant": name, "overrides": VARIANTS[name], "steps": steps, "seconds": elapsed,
            "test_psnr": test.psnr, "test_ssim": test.ssim, "train_psnr": train.psnr,
            "samples_per_step": float(trainer.step_fn.total_samples) / steps,
            "occupied_fraction": occupied, "rays_last": trainer.n_rays,
            "evaluated_on": (f"validation: every {validation_every}-th training view, held out"
                             if validation_every else "test split"),
            "train_views": len(trainer.train_data),
            "mean_hard_fraction": trainer.mean_hard_fraction(),
            "cuda_graphs": trainer.uses_cuda_graphs()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=None, help="scene (default: demo)")
    parser.add_argument("--preset", default="gpu")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=10000)
    budget.add_argument("--seconds", type=float, default=None,
                        help="train each variant for this much training clock instead")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--eval-images", type=int, default=40)
    parser.add_argument("--train-images", type=int, default=10)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--warmup", action="store_true",
                        help="a short untimed run first, so that compilation is not timed")
    parser.add_argument("--validation-every", type=int, default=None, metavar="N",
                        help="train without every N-th training view and evaluate on those "
                             "(test_psnr is then the validation PSNR): choose settings without "
                             "looking at the test split")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    gpu = device_name("cuda" if torch.cuda.is_available() else "cpu")
    report = {"gpu": gpu, "commit": git_commit(), "torch": torch.__version__,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "data": args.data,
              "steps": args.steps, "seconds": args.seconds, "eval_images": args.eval_images,
              "train_images": args.train_images, "validation_every": args.validation_every,
              "runs": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.warmup:  # fill the kernel caches so that no variant's clock holds compilation
        for name in ("default", "hsm"):
            run_variant(name, args.data, 200, 1, 1, Path(f"/tmp/quality-probe/warmup-{name}"),
                        not args.no_cuda_graphs, args.preset)
    for name in names:
        r = run_variant(name, args.data, args.steps, args.eval_images, args.train_images,
                        Path(f"/tmp/quality-probe/{name}"), not args.no_cuda_graphs,
                        args.preset, args.seconds, args.validation_every)
        report["runs"].append(r)
        print(f"{report['gpu']} {name:18s} {r['steps']} steps {r['seconds']:6.1f} s  test "
              f"{r['test_psnr']:.2f} dB  train {r['train_psnr']:.2f} dB  samples/step "
              f"{r['samples_per_step']:.0f}  occupied {r['occupied_fraction']:.4f}", flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
