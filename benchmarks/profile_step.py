"""Where the GPU time of a training step goes: kernel time per stage and per kernel.

Eager steps (each stage launched kernel by kernel) are timed with CUDA events elsewhere
(step_time.py), but those times include the gaps where the GPU waits for the host, which a
CUDA-graph step does not have. This script asks the profiler for the kernels' own durations
instead: it runs --warmup steps, then profiles --steps eager steps with a profiler range around
each stage of the step, and reports per step the summed kernel time of every stage, of the whole
step, and of the most expensive kernels. The sum over stages is the GPU time a perfectly
launched step would take, which is what tells how much of a step the backward is and where
mining's break-even lies.

On CUDA a kernel belongs to the stage during whose range it *ran*: the profiled steps
synchronise the device at every stage boundary, so each stage's kernels start and finish inside
its range. (Attributing kernels to the range that launched them misses the backward: autograd
launches its kernels from its own thread, outside the training thread's ranges.) Range
annotations that the profiler also lists as device events, such as the optimizer's
``Optimizer.step#...``, are not kernels and are left out.

    PYTHONPATH=src python benchmarks/profile_step.py .devdata/lego_400 --mining none,hsm \
        --out benchmarks/results/profile_step.json

Runs on CPU too (the kernel times are then CPU operator times), which is how it is tested.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


class StageRanges:
    """A trainer stage marker that opens a profiler range at each mark and names it, when it
    closes at the next mark, after the stage that mark ends (as TrainStep names them)."""

    def __init__(self, sync: bool = False) -> None:
        self.names: dict[str, str] = {}
        self._open: tuple[str, record_function] | None = None
        self._count = 0
        self._sync = sync

    def __call__(self, name: str) -> None:
        if self._sync:  # this stage's kernels finish inside its range
            torch.cuda.synchronize()
        if self._open is not None:
            label, rf = self._open
            rf.__exit__(None, None, None)
            # The range that ends at the next step's "start" is the loop between steps.
            self.names[label] = "between_steps" if name == "start" else name
        label = f"nerfmine_stage_{self._count}"
        self._count += 1
        rf = record_function(label)
        rf.__enter__()
        self._open = (label, rf)

    def close(self) -> None:
        if self._sync:
            torch.cuda.synchronize()
        if self._open is not None:
            label, rf = self._open
            rf.__exit__(None, None, None)
            self.names[label] = "between_steps"
            self._open = None


def _is_device_event(event) -> bool:
    """A device-side event: a kernel, a memcpy/memset, or a GPU-side range annotation."""
    device_type = getattr(event, "device_type", None)
    return device_type is not None and "CUDA" in str(device_type)


def _is_annotation(event) -> bool:
    """A range annotation (ours or a library's, e.g. ``Optimizer.step#NGPAdam.step``)."""
    if getattr(event, "is_user_annotation", False):
        return True
    return "annotation" in str(getattr(event, "activity_type", "") or "").lower()


def attribute_by_time(ranges: list[tuple[float, float, str]], start: float) -> str | None:
    """The stage whose [start, end] range holds ``start`` (ranges sorted and disjoint)."""
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid][1] < start:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(ranges) and ranges[lo][0] <= start <= ranges[lo][1]:
        return ranges[lo][2]
    return None


def profile_arm(data: str | None, mining: str, backend: str, warmup: int, steps: int,
                preset: str, overrides: dict | None = None) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    cuda = torch.cuda.is_available()
    config = make_config(preset, merge_overrides(
        {"backend": backend, "mining": mining, "data": {"path": data},
         "train": {"max_steps": 10**9, "cuda_graphs": False}}, overrides or {}))
    trainer = Trainer(config, Path(f"/tmp/nerfmine-profile-{mining}"))
    for _ in range(warmup):
        trainer.train_step()
    if cuda:
        torch.cuda.synchronize()
    ranges = StageRanges(sync=cuda)
    trainer.step_fn.stage_marker = ranges
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        ranges.close()
        if cuda:
            torch.cuda.synchronize()
    trainer.step_fn.stage_marker = lambda name: None

    events = prof.events()
    # The host-side stage ranges (on CUDA a device-side annotation of each also exists).
    stage_ranges = sorted(
        (e.time_range.start, e.time_range.end, ranges.names[e.name]) for e in events
        if e.name in ranges.names and not _is_device_event(e))
    stage_us: dict[str, float] = defaultdict(float)
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    total_kernel_us = 0.0
    unattributed_us = 0.0
    for event in events:
        if cuda:
            if not _is_device_event(event) or _is_annotation(event) \
                    or event.name in ranges.names:
                continue  # kernels and copies only
            duration = event.device_time
            stage = attribute_by_time(stage_ranges, event.time_range.start)
        else:
            if event.cpu_parent is None or event.cpu_parent.name not in ranges.names:
                continue  # on CPU: the operators directly inside a stage's range
            duration = event.cpu_time_total
            stage = ranges.names[event.cpu_parent.name]
        if stage is None:
            unattributed_us += duration
        else:
            stage_us[stage] += duration
        kernels[event.name][0] += duration
        kernels[event.name][1] += 1
        total_kernel_us += duration
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:30]
    per_step = 1e-3 / steps  # microseconds summed over the steps -> milliseconds per step
    return {
        "mining": mining,
        "backend": backend,
        "overrides": overrides or {},
        "profiled_steps": steps,
        "warmup_steps": warmup,
        "time_kind": "CUDA kernel time" if cuda else "CPU operator time",
        "total_kernel_ms_per_step": total_kernel_us * per_step,
        "stage_kernel_ms_per_step": {k: v * per_step for k, v in stage_us.items()},
        # The total minus the kernels that ran outside every stage range (none expected).
        "stage_sum_ms_per_step": sum(stage_us.values()) * per_step,
        "unattributed_ms_per_step": unattributed_us * per_step,
        "top_kernels": [{"name": name[:160], "ms_per_step": v[0] * per_step,
                         "launches_per_step": v[1] / steps} for name, v in top],
        "mean_hard_fraction": trainer.mean_hard_fraction(),
        "rays_per_step": trainer.n_rays,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=None, help="scene (default: demo)")
    parser.add_argument("--mining", default="none,hsm")
    parser.add_argument("--backend", default=None, help="default: triton on CUDA, else torch")
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--overrides", type=json.loads, default=None, metavar="JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    cuda = torch.cuda.is_available()
    backend = args.backend or ("triton" if cuda else "torch")
    report = {"gpu": device_name("cuda" if cuda else "cpu"), "commit": git_commit(),
              "torch": torch.__version__, "data": args.data,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "runs": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for mining in args.mining.split(","):
        r = profile_arm(args.data, mining, backend, args.warmup, args.steps, args.preset,
                        args.overrides)
        report["runs"].append(r)
        stages = " ".join(f"{k}={v:.3f}" for k, v in r["stage_kernel_ms_per_step"].items())
        print(f"{report['gpu']} {backend} mining={mining}: {r['time_kind']} "
              f"{r['total_kernel_ms_per_step']:.3f} ms/step (stages sum to "
              f"{r['stage_sum_ms_per_step']:.3f}) | {stages}", flush=True)
        for k in r["top_kernels"][:12]:
            print(f"    {k['ms_per_step']:.4f} ms x{k['launches_per_step']:.1f}  {k['name'][:90]}")
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
