"""Triton kernel tests: run in their OWN pytest process.

    TRITON_INTERPRET=1 PYTHONPATH=src python -m pytest -q tests/triton

On a machine without CUDA the kernels run through Triton's interpreter, which must be enabled
before ``triton`` is first imported -- hence a separate process. Without the interpreter and
without a GPU every test here is skipped. Sizes are tiny: the interpreter is ~1000x slower.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()
ENABLED = INTERPRET or HAS_CUDA
SKIP_REASON = (
    "Triton kernel tests need a CUDA GPU or the interpreter: run them in their own process with "
    "`TRITON_INTERPRET=1 PYTHONPATH=src python -m pytest -q tests/triton`"
)


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if os.path.abspath(str(item.fspath)).startswith(here + os.sep):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"
