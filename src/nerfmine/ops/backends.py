"""Which kernel backends this machine can run."""

from __future__ import annotations

import importlib.util
import os

BACKENDS = ("torch", "triton")


def triton_available() -> bool:
    """True when Triton imports and there is a CUDA GPU (or the interpreter is on)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
