"""Where the GPU memory of a training run goes with and without CUDA graphs (diagnostic).

Trains lego_400 (or DATA) for --steps steps per arm and prints, after every new CUDA-graph
capture and at the end: allocated, peak allocated and reserved bytes. Writes a JSON. Each arm
runs in its own process, as `nerfmine bench --arms A` does: per-process state (cuBLAS keeps a
workspace per stream for the life of the process, counted as allocated memory) would otherwise
be paid by whichever arm ran first.

    PYTHONPATH=src python benchmarks/graph_memory.py DATA --steps 3000 --out memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def run(data: str, mining: str, graphs: bool, steps: int, overrides: dict | None = None) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    config = make_config("gpu", merge_overrides(
        {"backend": "triton", "mining": mining, "data": {"path": data},
         "train": {"max_steps": steps, "cuda_graphs": graphs}}, overrides or {}))
    trainer = Trainer(config, Path(f"/tmp/graph-memory-{mining}-{graphs}"))
    torch.cuda.synchronize()
    setup = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    events = []
    captures = 0
    for step in range(steps):
        trainer.train_step()
        now = (trainer.graph_stats() or {"captures": 0})["captures"]
        if now != captures or step in (0, 1, 2, 10, steps - 1):
            torch.cuda.synchronize()
            captures = now
            events.append({"step": step, "captures": now,
                           "allocated": torch.cuda.memory_allocated() - setup,
                           "peak": torch.cuda.max_memory_allocated() - setup,
                           "reserved": torch.cuda.memory_reserved()})
    result = {"mining": mining, "graphs": graphs, "overrides": overrides or {},
              "setup_bytes": setup, "events": events,
              "increment_bytes": torch.cuda.max_memory_allocated() - setup}
    print(f"{mining:4s} graphs={graphs}: increment {result['increment_bytes'] / 2**20:.1f} MiB, "
          f"captures {captures}; " + " ".join(
              f"[s{e['step']} c{e['captures']} a{e['allocated'] / 2**20:.0f} "
              f"p{e['peak'] / 2**20:.0f} r{e['reserved'] / 2**20:.0f}]" for e in events[:40]),
          flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overrides", type=json.loads, default=None, metavar="JSON",
                        help="config overrides for every run (as step_time.py)")
    parser.add_argument("--modes", default="graphs,eager", help="graphs, eager or both")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "mining,graphs|eager"
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    if args.one:
        mining, graphs = args.one.split(",")
        print(json.dumps(run(args.data, mining, graphs == "graphs", args.steps,
                             args.overrides)))
        return 0
    report = {"gpu": device_name("cuda"), "commit": git_commit(),
              "overrides": args.overrides or {}, "runs": []}
    for mining in ("none", "hsm"):
        for graphs in args.modes.split(","):
            child = subprocess.run([sys.executable, __file__, args.data, "--steps",
                                    str(args.steps), "--out", str(args.out), "--one",
                                    f"{mining},{graphs}"]
                                   + (["--overrides", json.dumps(args.overrides)]
                                      if args.overrides else []),
                                   capture_output=True, text=True)
            if child.returncode != 0:
                sys.stderr.write(child.stderr)
                return child.returncode
            lines = child.stdout.strip().splitlines()
            print("\n".join(lines[:-1]), flush=True)
            report["runs"].append(json.loads(lines[-1]))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
