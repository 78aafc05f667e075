"""Milliseconds per occupancy-grid update on a CUDA GPU, by how the update is run.

Trains a scene for --warmup steps (so the grid and the weights are a real run's), then times
the update itself, warm-up kind (every cell) and steady kind (half the cells), in variants that
add one change at a time: the query points by PyTorch operators or by the Triton kernel
(nerfmine.ops.cell_points), the density query in fp32 or under fp16 autocast (the training
forward's precision), eager or replayed from a CUDA graph, and the chunk size. CUDA-event time
over --repeats updates, their mean; one JSON with the GPU name and the commit.

    PYTHONPATH=src python benchmarks/occupancy_update.py DATA --out occupancy_update.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from pathlib import Path

import torch

VARIANTS = [  # (name, points backend, fp16 autocast, captured, chunk size)
    ("torch points, fp32, eager", "torch", False, False, 2**16),
    ("triton points, fp32, eager", "triton", False, False, 2**16),
    ("triton points, fp16, eager", "triton", True, False, 2**16),
    ("triton points, fp16, graph", "triton", True, True, 2**16),
    ("triton points, fp16, graph, chunk 2^17", "triton", True, True, 2**17),
    ("triton points, fp16, graph, chunk 2^18", "triton", True, True, 2**18),
]


def time_update(trainer, step: int, backend: str, amp: bool, graph: bool, chunk: int,
                repeats: int) -> dict:
    from dataclasses import replace

    from nerfmine.graphs import StepGraphs

    grid, field = trainer.occupancy, trainer.field
    saved = grid.density.clone(), grid.bitfield.clone(), grid.config
    grid.config = replace(grid.config, chunk_size=chunk)
    amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.float16, cache_enabled=False)) if amp \
        else contextlib.nullcontext

    def update(capturing: bool = False) -> None:
        with amp_ctx():
            grid.update(step, field.density, None, backend=backend)

    graphs = StepGraphs(trainer.device) if graph else None
    run = (lambda: graphs.run("update", update)) if graph else update
    run()  # compiles kernels; with graphs also captures
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with graphs.on_stream() if graph else contextlib.nullcontext():
        a.record()
        for _ in range(repeats):
            run()
        b.record()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grid.density.copy_(saved[0])
    grid.bitfield.copy_(saved[1])
    grid.config = saved[2]
    return {"ms_per_update": a.elapsed_time(b) / repeats, "peak_increment_bytes": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data")
    parser.add_argument("--warmup", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.config import make_config
    from nerfmine.provenance import device_name, git_commit
    from nerfmine.trainer import Trainer

    config = make_config("gpu", {"mining": "none", "data": {"path": args.data},
                                 "train": {"max_steps": 10**9}})
    trainer = Trainer(config, Path("/tmp/nerfmine-occupancy-update"))
    for _ in range(args.warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    grid = trainer.occupancy
    results = {"gpu": device_name("cuda"), "commit": git_commit(),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "torch": torch.__version__, "data": args.data, "warmup_steps": args.warmup,
               "cascades": grid.n_cascades, "resolution": grid.resolution,
               "update_interval": grid.config.update_interval, "runs": []}
    for name, backend, amp, graph, chunk in VARIANTS:
        for kind, step in (("every cell", 0), ("half the cells", grid.config.warmup_steps)):
            r = time_update(trainer, step, backend, amp, graph, chunk, args.repeats)
            r.update(variant=name, kind=kind, chunk_size=chunk)
            results["runs"].append(r)
            print(f"{results['gpu']} {name:40s} {kind:15s} {r['ms_per_update']:8.3f} ms/update "
                  f"({r['ms_per_update'] / grid.config.update_interval:.3f} ms/step amortised), "
                  f"+{r['peak_increment_bytes'] / 2**20:.0f} MiB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
