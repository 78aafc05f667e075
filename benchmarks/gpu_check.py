"""End-to-end GPU check: both backends train the same scene from one seed.

For each backend (torch reference, triton with each step launched kernel by kernel, triton
with each step replayed as a CUDA graph) and mining mode, train the bundled demo scene (or
DATA) for --steps steps from the same seed and config, record the loss curve and the test PSNR,
and compare them. Run through the device tool; the JSON is committed under
benchmarks/results/.

    PYTHONPATH=src python benchmarks/gpu_check.py --steps 1500 --out results/gpu_check.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch


def train(backend: str, mining: str, data: str | None, steps: int, run_dir: Path,
          graphs: bool = False) -> dict:
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    overrides = {"backend": backend, "mining": mining, "data": {"path": data},
                 "train": {"max_steps": steps, "seed": 0, "cuda_graphs": graphs},
                 "eval": {"save_renders": False}}
    trainer = Trainer(make_config("gpu", overrides), run_dir)
    losses = []
    torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        stats = trainer.train_step()
        if step % 50 == 0 or step == steps - 1:
            losses.append((step, float(stats.loss)))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = trainer.evaluate()
    graph_info = trainer.step_fn.graph_stats()
    return {"backend": backend, "mining": mining, "cuda_graphs": trainer.uses_cuda_graphs(),
            "graphs": graph_info, "steps": steps, "seconds": seconds,
            "psnr": result.psnr, "ssim": result.ssim, "loss_curve": losses,
            "mean_hard_fraction": trainer.mean_hard_fraction()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None, help="scene folder (default: the demo scene)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--mining", default="hsm,none")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    report = {"gpu": device_name("cuda"), "commit": git_commit(), "torch": torch.__version__,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "data": args.data or "demo lego_100", "runs": []}
    for mining in args.mining.split(","):
        pair = {}
        for backend, graphs in (("torch", False), ("triton", False), ("triton", True)):
            name = backend + ("+graphs" if graphs else "")
            r = train(backend, mining, args.data, args.steps, Path(f"/tmp/gpu-check-{name}"),
                      graphs=graphs)
            pair[name] = r
            report["runs"].append(r)
            print(f"{report['gpu']} {name:13s} mining={mining}: {args.steps} steps in "
                  f"{r['seconds']:.1f} s, PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
                  f"final loss {r['loss_curve'][-1][1]:.5f}, graphs {r['graphs']}", flush=True)
        report.setdefault("psnr_difference_triton_minus_torch", {})[mining] = (
            pair["triton"]["psnr"] - pair["torch"]["psnr"])
        report.setdefault("psnr_difference_graphs_minus_eager", {})[mining] = (
            pair["triton+graphs"]["psnr"] - pair["triton"]["psnr"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k.startswith("psnr_difference")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
