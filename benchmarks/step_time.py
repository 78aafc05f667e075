"""Milliseconds per training step and per stage, on a CUDA GPU (benchmark-protocol.md).

For each backend, mining mode and CUDA-graph setting: warm up (default 2000 steps, so the
occupancy grid and the ray count reach their steady state), then time steps: the whole step with
CUDA events (median over --steps, without stage events), the wall-clock time per step over the
same steps (host included: what a run gets), and each stage (median, with events between
stages; inside a CUDA graph there are no stages, so graph runs report the stages of the same
step run eagerly). Writes one JSON with the GPU name and the commit.

    PYTHONPATH=src python benchmarks/step_time.py DATA --backends torch,triton \
        --mining none,hsm --graphs on,off --out benchmarks/results/step_time.json

CUDA graphs apply to the triton backend only; torch runs are always eager.
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


class StageEvents:
    """Records a CUDA event at each named mark; durations are between consecutive marks."""

    def __init__(self):
        self.steps: list[list[tuple[str, torch.cuda.Event]]] = []

    def __call__(self, name: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        if name == "start":
            self.steps.append([])
        self.steps[-1].append((name, event))

    def medians(self) -> dict[str, float]:
        torch.cuda.synchronize()
        per_stage: dict[str, list[float]] = {}
        for marks in self.steps:
            totals: dict[str, float] = {}
            for (_, a), (name, b) in zip(marks, marks[1:]):
                totals[name] = totals.get(name, 0.0) + a.elapsed_time(b)
            for name, ms in totals.items():
                per_stage.setdefault(name, []).append(ms)
        n = len(self.steps)
        # Stages that run only on some steps (the occupancy update) are amortised over all.
        return {name: statistics.median(v) if len(v) == n else sum(v) / n
                for name, v in per_stage.items()}


def measure(data: str, backend: str, mining: str, warmup: int, steps: int,
            graphs: bool = False, overrides: dict | None = None) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    config = make_config("gpu", merge_overrides(
        {"backend": backend, "mining": mining, "data": {"path": data},
         "train": {"max_steps": 10**9, "cuda_graphs": graphs}}, overrides or {}))
    trainer = Trainer(config, Path("/tmp/nerfmine-step-time"))
    for _ in range(warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    starts, ends = [], []
    samples = []
    wall0 = time.perf_counter()
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        stats = trainer.train_step()
        b.record()
        starts.append(a)
        ends.append(b)
        samples.append(stats.n_samples)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - wall0) * 1e3 / steps
    step_ms = [a.elapsed_time(b) for a, b in zip(starts, ends)]
    peak = torch.cuda.max_memory_allocated()
    uses_graphs = trainer.uses_cuda_graphs()
    graph_info = trainer.step_fn.graph_stats()
    events = StageEvents()
    trainer.step_fn.stage_marker = events
    trainer.step_fn.disable_graphs("stage timing runs eagerly")
    for _ in range(steps):
        trainer.train_step()
    stages = events.medians()
    trainer.step_fn.stage_marker = lambda name: None
    return {
        "backend": backend,
        "mining": mining,
        "overrides": overrides or {},
        "cuda_graphs": uses_graphs,
        "graphs": graph_info,
        "wall_ms_per_step": wall_ms,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "median_step_ms": statistics.median(step_ms),
        "mean_step_ms": statistics.fmean(step_ms),
        "stage_ms": stages,
        "mean_samples_per_step": float(torch.stack(samples).double().mean()),
        "rays_per_step": trainer.n_rays,
        "mean_hard_fraction": trainer.mean_hard_fraction(),
        "peak_bytes_during_timed_steps": peak,
        "allocated_after_warmup_bytes": base,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data")
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--mining", default="none,hsm")
    parser.add_argument("--graphs", default="on,off", help="on, off or both (triton only)")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--overrides", type=json.loads, default=None, metavar="JSON",
                        help='config overrides for every run, e.g. \'{"train": '
                             '{"second_pass_chunk": 262144}}\'')
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    results = {"gpu": device_name("cuda"), "commit": git_commit(),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "torch": torch.__version__, "data": args.data, "runs": []}
    for backend in args.backends.split(","):
        for mining in args.mining.split(","):
            for graphs in args.graphs.split(","):
                if backend != "triton" and graphs == "on":
                    continue
                if backend != "triton" and "off" not in args.graphs.split(","):
                    graphs = "off"
                r = measure(args.data, backend, mining, args.warmup, args.steps,
                            graphs=graphs == "on", overrides=args.overrides)
                results["runs"].append(r)
                stages = " ".join(f"{k}={v:.3f}" for k, v in r["stage_ms"].items())
                print(f"{results['gpu']} {backend:6s} {mining:4s} graphs {graphs:3s} median "
                      f"{r['median_step_ms']:.3f} ms/step, wall {r['wall_ms_per_step']:.3f} ms "
                      f"({r['mean_samples_per_step']:.0f} samples, {r['rays_per_step']} rays, "
                      f"graphs {r['graphs']}) | {stages}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
