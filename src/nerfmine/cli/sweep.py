"""``nerfmine sweep SWEEP.json -o OUT``: many scenes or settings at once, one process per GPU,
started through PyTorch's launcher (torchrun); one combined table (:mod:`nerfmine.sweep`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nerfmine.cli.common import Progress, check_writable, launch_ranks
from nerfmine.errors import NerfmineError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep", help="train many scenes or settings at once, one process per GPU",
        description="Train the runs of SWEEP.json (a list of runs, or scenes x arms x seeds; "
                    "see nerfmine/sweep.py) into OUT/<name>/, one process per GPU through "
                    "torchrun, each process its share of the runs one after the other, then "
                    "write OUT/sweep.json and OUT/sweep_table.md. Started again on the same "
                    "OUT it skips finished runs and resumes stopped ones.")
    p.add_argument("sweep", type=Path, help="the sweep file (JSON)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="OUT",
                   help="folder of the runs and the table")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="processes to start through torchrun (default: one per CUDA GPU, "
                        "else 1); ignored when already started by torchrun")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: rebuild the table from the run folders")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from nerfmine.sweep import load_sweep, rank_and_world, run_share, write_table

    sweep = load_sweep(args.sweep)
    out_dir = Path(args.output)
    if args.table_only:
        print(_table_text(write_table(sweep, out_dir), out_dir))
        return 0
    rank, world, local_rank = rank_and_world()
    if "WORLD_SIZE" not in os.environ:
        processes = args.processes if args.processes is not None else _default_processes()
        if processes < 1:
            raise NerfmineError(f"--processes must be at least 1, got {processes}")
        if processes > 1:
            argv = ["sweep", str(args.sweep), "--output", str(args.output)]
            return launch_ranks(processes, argv + (["--quiet"] if args.quiet else []), "sweep",
                                f"the runs that finished are in {args.output}; start the same "
                                "command again to resume the others, or rebuild the table "
                                "with --table-only")
    check_writable(out_dir)
    _use_gpu(local_rank)
    quiet = args.quiet or not sys.stdout.isatty() or world > 1
    # The ranks join their process group only after their runs: a trainer that sees one
    # would train data-parallel, and a sweep's runs are independent. Joining waits for every
    # rank, which is the barrier before rank 0 writes the table.
    run_share(sweep, out_dir, rank, world, log=lambda line: print(line, flush=True),
              progress_factory=lambda: Progress(quiet))
    if _join(world):
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(_table_text(write_table(sweep, out_dir), out_dir))
    return 0


def _table_text(report: dict, out_dir: Path) -> str:
    from nerfmine.sweep import table

    return table(report["runs"]) + f"written: {out_dir / 'sweep.json'}, sweep_table.md"


def _default_processes() -> int:
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _use_gpu(local_rank: int) -> None:
    """Each rank trains on GPU ``LOCAL_RANK`` (where there are GPUs)."""
    import torch

    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise NerfmineError(f"rank with LOCAL_RANK {local_rank} has no GPU of its own "
                                f"({torch.cuda.device_count()} visible); start at most one "
                                "process per GPU")
        torch.cuda.set_device(local_rank)


def _join(world: int) -> bool:
    """Join the launcher's process group over gloo (a barrier only: no GPU needed); it waits
    for every rank."""
    if world <= 1:
        return False
    import datetime

    import torch.distributed as dist

    # Ranks finish their shares at different times: wait as long as a sweep may take.
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return True
