"""How much of the hash table one training step's gradient touches: the number that decides
between a dense all-reduce of the table's gradient and an exchange of touched rows only in
data-parallel training (issue 18).

Trains DATA with the given preset and arm for --warmup steps, then for --steps more steps
counts the table rows whose gradient is non-zero after the step's backward, per level and in
all. Bytes a rank would send: dense, every row (F fp32 features); sparse, each touched row's
index (int32) and features, for one rank's rows (the union over ranks, which a sparse exchange
must send, is at least that). Steps run eagerly (the count is taken between stages). One JSON.

    PYTHONPATH=src python benchmarks/touched_rows.py .devdata/lego_400 --mining none,hsm \\
        --out touched_rows.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch


def measure(data: str, preset: str, mining: str, warmup: int, steps: int, overrides) -> dict:
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    config = make_config(preset, merge_overrides(
        {"mining": mining, "data": {"path": data}, "train": {"max_steps": 10**9}},
        overrides or {}))
    trainer = Trainer(config, Path("/tmp/nerfmine-touched-rows"))
    step_fn = trainer.step_fn
    step_fn.disable_graphs("rows are counted between stages")
    for _ in range(warmup):
        trainer.train_step()
    offsets = trainer.field.spec.level_offsets
    counts: list[list[int]] = []

    def marker(name: str) -> None:
        if name == "forward_backward":
            touched = (step_fn.table_grad != 0).any(dim=1)  # [rows]
            counts.append([int(touched[a:b].sum()) for a, b in zip(offsets, offsets[1:])])

    step_fn.stage_marker = marker
    for _ in range(steps):
        trainer.train_step()
    step_fn.stage_marker = lambda name: None
    rows, features = step_fn.table_grad.shape
    per_level = [statistics.fmean(c[level] for c in counts) for level in range(len(offsets) - 1)]
    touched = statistics.fmean(sum(c) for c in counts)
    dense = rows * features * 4
    sparse = touched * (4 + features * 4)
    return {"mining": mining, "preset": preset, "warmup_steps": warmup, "steps": steps,
            "rows": rows, "features": features, "mean_touched_rows": touched,
            "touched_fraction": touched / rows,
            "per_level_touched_fraction": [n / (b - a) for n, a, b in
                                           zip(per_level, offsets, offsets[1:])],
            "dense_bytes": dense, "sparse_bytes_one_rank": sparse,
            "sparse_over_dense": sparse / dense,
            "mean_samples_per_step": trainer.config.train.target_samples,
            "mean_hard_fraction": trainer.mean_hard_fraction()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--mining", default="none,hsm")
    parser.add_argument("--preset", default="gpu", help="gpu (the defaults) or cpu")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--overrides", type=json.loads, default=None, metavar="JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.provenance import device_name, git_commit

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": device_name(device), "commit": git_commit(),
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "torch": torch.__version__, "data": args.data, "runs": []}
    for mining in args.mining.split(","):
        overrides = json.loads(json.dumps(args.overrides or {}))
        if device == "cpu":
            overrides.setdefault("device", "cpu")
        r = measure(args.data, args.preset, mining, args.warmup, args.steps, overrides)
        results["runs"].append(r)
        levels = " ".join(f"{f:.2f}" for f in r["per_level_touched_fraction"])
        print(f"{results['device']} {mining:4s}: {r['touched_fraction']:.3f} of {r['rows']} rows "
              f"touched a step (per level: {levels}); sparse/dense bytes "
              f"{r['sparse_over_dense']:.2f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
