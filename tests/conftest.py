"""Shared test setup.

The Triton kernel tests in tests/triton need TRITON_INTERPRET=1 set before Triton is imported,
so they run in their own pytest process: tests/test_triton_interpreter.py starts it. A plain
``pytest`` therefore leaves that folder out of its own collection (unless the interpreter is on
or a GPU is present, when it can run them directly).
"""

from __future__ import annotations

import os
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
