"""Checks that a training step makes no host synchronisation (CUDA only).

Runs warm-up steps, then steps under torch.cuda.set_sync_debug_mode("error"), which raises on
any operation that synchronises the host with the GPU (.item(), nonzero, blocking copies).
The occupancy update (every 16 steps) is included.

    PYTHONPATH=src python benchmarks/sync_check.py DATA --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data")
    parser.add_argument("--backends", default="triton")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from nerfmine.config import make_config
    from nerfmine.provenance import device_name, git_commit
    from nerfmine.trainer import Trainer

    report = {"gpu": device_name("cuda"), "commit": git_commit(), "results": {}}
    ok = True
    for backend in args.backends.split(","):
        for mining in ("none", "hsm"):
            config = make_config("gpu", {"backend": backend, "mining": mining,
                                         "data": {"path": args.data},
                                         "train": {"max_steps": 10**6}})
            trainer = Trainer(config, Path("/tmp/nerfmine-sync-check"))
            for _ in range(300):  # past the occupancy warm-up
                trainer.train_step()
            torch.cuda.synchronize()
            key = f"{backend}/{mining}"
            try:
                torch.cuda.set_sync_debug_mode("error")
                for _ in range(48):
                    trainer.train_step()
                torch.cuda.set_sync_debug_mode("default")
                report["results"][key] = "no host synchronisation in 48 steps"
            except Exception as exc:  # noqa: BLE001 - report what synchronised
                torch.cuda.set_sync_debug_mode("default")
                ok = False
                report["results"][key] = "".join(traceback.format_exception(exc))[-3000:]
            print(key, report["results"][key], flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
