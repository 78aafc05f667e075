"""The ``nerfmine`` command: one module per subcommand, each with ``add_parser`` and ``run``.

``train`` (:mod:`~nerfmine.cli.train`), ``eval``, ``bench``, ``render``, ``export``, ``view``,
``process``, ``image`` (:mod:`~nerfmine.cli.image`, the image primitive), ``sdf``
(:mod:`~nerfmine.cli.sdf`, the signed-distance primitive) and ``sweep`` (many runs, one
process per GPU); the flags train and
bench share, the progress bar and the run-folder checks are in :mod:`nerfmine.cli.common`. A
user mistake (:class:`~nerfmine.errors.NerfmineError`) prints one line and exits with status 2,
an interrupted training run exits with 130 after its checkpoint.
Building the parser imports neither torch nor the optional packages, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys

from nerfmine.cli import bench, common, export, image, process, render, sdf, sweep, train, view
from nerfmine.cli import eval as eval_
from nerfmine.errors import NerfmineError, TrainingInterrupted

COMMANDS = {"train": train, "eval": eval_, "bench": bench, "render": render,
            "export": export, "view": view, "process": process, "image": image, "sdf": sdf,
            "sweep": sweep}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerfmine",
        description="Train Instant-NGP NeRFs with online hard sample mining.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return common.EXIT_INTERRUPTED
    except NerfmineError as exc:
        print(f"nerfmine: {exc}", file=sys.stderr)
        if isinstance(exc, TrainingInterrupted):
            return common.EXIT_INTERRUPTED
        return common.EXIT_USER_ERROR
