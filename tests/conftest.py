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

collect_ignore: list[str] = []
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    collect_ignore.append("triton")


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (or $NERFMINE_SHARED_DATA), if present."""
    env = os.environ.get("NERFMINE_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None
