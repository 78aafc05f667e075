"""Where the GPU memory of a training run goes with and without CUDA graphs (diagnostic).

Trains lego_400 (or DATA) for --steps steps per arm and prints, after every new CUDA-graph
capture and at the end: allocated, peak allocated and reserved bytes. Writes a JSON. Each arm
runs in its own process, as `nerfmine bench --arms A` does: per-process state (cuBLAS keeps a
workspace per stream for the life of the process, counted as allocated memory) would otherwise
be paid by whichever arm ran first.

    PYTHONPATH=src python benchmarks/graph_memory.py DATA --steps 3000 --out memory.json

With --snapshot, each arm also records the allocator's history after setup
(torch.cuda.memory._record_memory_history) and names the allocations alive at its peak, grouped
by the innermost nerfmine (or benchmark) source line that made them: which tensors the training
increment is made of.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def _site(frames: list[dict]) -> str:
    """The innermost frame of our own code (else the innermost Python frame) of a trace event."""
    for frame in frames:
        name = frame.get("filename", "")
        if "nerfmine" in name or "benchmarks" in name:
            short = name.split("src/")[-1] if "src/" in name else Path(name).name
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    for frame in frames:
        if frame.get("filename", "").endswith(".py"):
            return f"{Path(frame['filename']).name}:{frame.get('line')} {frame.get('name')}"
    return "(no Python frame: library workspace or allocator)"


def peak_breakdown(trace: list[dict], top: int = 25) -> dict:
    """Replay an allocator trace (the events of ``torch.cuda.memory._snapshot()``'s
    ``device_traces``) and return the bytes alive at the highest point, by allocation site.

    Only allocations made while recording count (setup is not part of the increment); a block
    leaves at its ``free_requested`` (when the tensor dies, as memory_allocated counts it).
    """
    sizes: dict[int, int] = {}
    current = peak = 0
    peak_index = -1
    for index, event in enumerate(trace):
        action, addr = event.get("action"), event.get("addr")
        if action == "alloc":
            sizes[addr] = event["size"]
            current += event["size"]
            if current > peak:
                peak, peak_index = current, index
        elif action in ("free_requested", "free_completed") and addr in sizes:
            current -= sizes.pop(addr)
    # Second pass up to the peak, now naming the sites of what is alive there.
    live: dict[int, tuple[int, str]] = {}
    for event in trace[: peak_index + 1]:
        action, addr = event.get("action"), event.get("addr")
        if action == "alloc":
            live[addr] = (event["size"], _site(event.get("frames") or []))
        elif action in ("free_requested", "free_completed"):
            live.pop(addr, None)
    sites: dict[str, list[int]] = {}
    for size, site in live.values():
        entry = sites.setdefault(site, [0, 0])
        entry[0] += size
        entry[1] += 1
    ranked = sorted(sites.items(), key=lambda kv: -kv[1][0])
    return {"peak_bytes": peak, "peak_event": peak_index, "events": len(trace),
            "sites": [{"site": site, "bytes": b, "blocks": n} for site, (b, n) in ranked[:top]],
            "other_bytes": sum(b for _, (b, _) in ranked[top:])}


def run(data: str, mining: str, graphs: bool, steps: int, overrides: dict | None = None,
        snapshot: bool = False) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    config = make_config("gpu", merge_overrides(
        {"backend": "triton", "mining": mining, "data": {"path": data},
         "train": {"max_steps": steps, "cuda_graphs": graphs}}, overrides or {}))
    trainer = Trainer(config, Path(f"/tmp/graph-memory-{mining}-{graphs}"))
    torch.cuda.synchronize()
    setup = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if snapshot:
        torch.cuda.memory._record_memory_history(enabled="all", context="alloc",
                                                 stacks="python", max_entries=2_000_000)
    events = []
    captures = 0
    for step in range(steps):
        trainer.train_step()
        now = (trainer.step_fn.graph_stats() or {"captures": 0})["captures"]
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
    if snapshot:
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = snap["device_traces"][torch.cuda.current_device()]
        result["peak_breakdown"] = peak_breakdown(trace)
        traced = result["peak_breakdown"]["peak_bytes"] / 2**20
        print(f"{mining} graphs={graphs}: at the traced peak ({traced:.1f} MiB above setup):",
              flush=True)
        for entry in result["peak_breakdown"]["sites"]:
            print(f"  {entry['bytes'] / 2**20:8.2f} MiB  {entry['blocks']:4d}  {entry['site']}",
                  flush=True)
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
    parser.add_argument("--snapshot", action="store_true",
                        help="record the allocator's history and name what is alive at the peak")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "mining,graphs|eager"
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    if args.one:
        mining, graphs = args.one.split(",")
        print(json.dumps(run(args.data, mining, graphs == "graphs", args.steps,
                             args.overrides, args.snapshot)))
        return 0
    report = {"gpu": device_name("cuda"), "commit": git_commit(),
              "overrides": args.overrides or {}, "runs": []}
    for mining in ("none", "hsm"):
        for graphs in args.modes.split(","):
            child = subprocess.run([sys.executable, __file__, args.data, "--steps",
                                    str(args.steps), "--out", str(args.out), "--one",
                                    f"{mining},{graphs}"]
                                   + (["--overrides", json.dumps(args.overrides)]
                                      if args.overrides else [])
                                   + (["--snapshot"] if args.snapshot else []),
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
