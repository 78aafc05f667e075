"""``nerfmine bench``: train the baseline (mining none) and hard sample mining side by side on
the same scene, seed and settings, and compare them (:mod:`nerfmine.bench`). Several scenes
and ``--seeds`` run every arm of every scene and seed, and report the mean, min and max over
seeds per scene and arm."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nerfmine.cli.common import Progress, add_training_flags, check_writable, training_overrides
from nerfmine.errors import NerfmineError


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as "
                                         f"0,1,2, got '{text}'")
    return seeds


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="train the baseline (--mining none) and hard sample mining side by side")
    p.add_argument("scenes", nargs="*", default=[],
                   help="scenes, in any format train reads (default: the bundled demo scene)")
    add_training_flags(p, "bench")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="0,1,2",
                   help="run every arm with each of these seeds (default: --seed, else 0); "
                        "with several seeds or scenes the report gives mean, min and max")
    p.add_argument("--arms", default="none,hsm", help="comma-separated: none, hsm")
    p.add_argument("--output", "-o", type=Path, default=Path("runs/bench"))
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="combine metrics.json / bench.json files of arms run separately, or "
                        "the bench.json files of several-seed benches (a seed per command)")
    p.add_argument("--warm-steps", type=int, default=0, metavar="N",
                   help="before each arm, train a throwaway run of N steps, so that its clock "
                        "starts with the kernels compiled (the protocol's warm figure; "
                        "default 0: cold)")
    return p


def run(args: argparse.Namespace) -> int:
    from nerfmine.bench import ARMS, merge, print_warnings, run_arm, write_report

    if args.merge:
        report = merge(args.merge, args.output)
        if "runs" in report:  # benches of several scenes or seeds
            print((args.output / "bench_table.md").read_text())
            print(f"written: {args.output / 'bench.json'}, bench_table.md")
            return 0
    else:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise NerfmineError(f"--arms: unknown arm(s) {', '.join(bad)}; choose from none, hsm")
        overrides = training_overrides(args)
        check_writable(args.output)
        if len(args.scenes) > 1 or args.seeds is not None:
            from nerfmine.bench import run_suite

            seeds = args.seeds or [args.seed if args.seed is not None else 0]
            report = run_suite(args.scenes or [None], seeds, arms, overrides, args.preset,
                               args.output, lambda: Progress(_quiet(args)), args.warm_steps,
                               log=lambda line: print(line, flush=True))
            print((args.output / "bench_table.md").read_text())  # warnings included
            print(f"written: {args.output / 'bench.json'}, bench_table.md")
            return 0
        if args.scenes:
            overrides.setdefault("data", {})["path"] = str(Path(args.scenes[0]).resolve())
        results = {}
        for arm in arms:
            print(f"bench: training arm mining={arm} into {args.output / arm}", flush=True)
            progress = Progress(_quiet(args))
            try:
                results[arm] = run_arm(arm, overrides, args.preset, args.output, progress,
                                       warm_steps=args.warm_steps)
            finally:
                progress.close()
            print(f"bench: mining={arm}: PSNR {results[arm]['psnr']:.2f} dB after "
                  f"{results[arm]['steps']} steps", flush=True)
        report = write_report(results, args.output)
    print(json.dumps(report["comparison"], indent=2))
    print_warnings(report["warnings"], log=lambda line: print(line, flush=True))
    print(f"written: {args.output / 'bench.json'}, bench_psnr_time.png, bench_psnr_steps.png")
    return 0


def _quiet(args: argparse.Namespace) -> bool:
    return args.quiet or not sys.stdout.isatty()
