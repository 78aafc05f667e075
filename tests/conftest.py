"""Shared test setup.

The Triton kernel tests in tests/triton need TRITON_INTERPRET=1 set before Triton is imported,
so they run in their own pytest process: tests/test_triton_interpreter.py starts it. A plain
``pytest`` therefore leaves that folder out of its own collection (unless the interpreter is on
or a GPU is present, when it can run them directly).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the test extra; only the fuzz tests need it
    settings = None

collect_ignore: list[str] = []
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    collect_ignore.append("triton")


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $NERFMINE_SHARED_DATA), if present."""
    env = os.environ.get("NERFMINE_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def straight_and_resumed(fit_class, config, source: Path, tmp_path: Path):
    """The single-task primitives' resume (nerfmine.fit_loop.FitLoop): a fit of ``config``
    trained in one go, and one stopped at half of ``config.steps`` and resumed to the end (a
    separate process would do the same: resume reads only the run folder). Returns both."""
    straight = fit_class.create(config, source, tmp_path / "a")
    straight.train()
    half = fit_class.create(config.__class__(**{**config.to_dict(),
                                                "steps": config.steps // 2}),
                            source, tmp_path / "b")
    half.train()
    resumed = fit_class.resume(tmp_path / "b", {"steps": config.steps})
    assert resumed.step == config.steps // 2
    resumed.train()
    return straight, resumed


def check_cli_fit_and_resume(command: str, source: Path, run: Path, flags: list[str],
                             capsys) -> None:
    """``nerfmine COMMAND`` (image, sdf) through nerfmine.cli.common.run_fit: two steps with
    ``flags`` (an evaluation every 2 steps), resumed to 4; then what a resume or a new run
    refuses, each with exit status 2 and its message: a folder that holds a run, a setting
    the resume cannot change, a file other than the one fitted."""
    from nerfmine.cli import main

    assert main([command, str(source), "-o", str(run), "--steps", "2", *flags]) == 0
    assert main([command, "--resume", str(run), "--steps", "4", "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and [p["step"] for p in metrics["curve"]] == [2, 4]
    capsys.readouterr()
    assert main([command, str(source), "-o", str(run)]) == 2  # the folder holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert main([command, "--resume", str(run), "--seed", "1"]) == 2
    assert "seed cannot change" in capsys.readouterr().err
    changed = run.parent / f"changed{source.suffix}"
    shutil.copyfile(source, changed)
    with open(changed, "ab") as handle:
        handle.write(b"\n")
    assert main([command, str(changed), "--resume", str(run)]) == 2
    assert "its content changed" in capsys.readouterr().err


# Property-based tests (tests/test_fuzz_readers.py): "ci" (the default) is bounded and
# reproducible, so that every fuzz test together stays well under two minutes on a slow
# two-core machine; "long" explores far more inputs and is run by hand:
#   NERFMINE_HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz_readers.py
# Neither writes an example database into the checkout; a failure prints the example (and
# @reproduce_failure) to replay it.
if settings is not None:
    _quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
              HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                              database=None, print_blob=True, suppress_health_check=_quiet)
    settings.register_profile("long", max_examples=2500, deadline=None, database=None,
                              print_blob=True, suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("NERFMINE_HYPOTHESIS_PROFILE", "ci"))
