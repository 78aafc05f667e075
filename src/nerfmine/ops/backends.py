"""Kernel backends: which exist, which this machine can run, and the lazy Triton loader.

Every public op in :mod:`nerfmine.ops` takes ``backend="torch"`` (the pure-PyTorch reference:
the spec, the CPU path and the test oracle) or ``backend="triton"`` (CUDA, or Triton's
interpreter under ``TRITON_INTERPRET=1``). Triton is imported at the first use of a Triton
kernel, through :func:`triton_module`, so importing nerfmine needs neither Triton nor a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

from nerfmine.errors import NerfmineError

BACKENDS = ("torch", "triton")


def check_backend(op: str, backend: str) -> None:
    """Raise ValueError naming ``op`` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; use 'torch' or 'triton'")


def interpreting() -> bool:
    """True when Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    """True when Triton imports and there is a CUDA GPU (or the interpreter is on)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or interpreting()


def triton_module(op: str, *tensors: torch.Tensor):
    """Import ``nerfmine.ops._triton.<op>`` lazily, with errors that say what to do: the
    tensors must be on a CUDA device (unless the interpreter is on) and Triton installed."""
    if not interpreting() and not all(t.is_cuda for t in tensors):
        devices = sorted({str(t.device) for t in tensors})
        raise NerfmineError(
            f"backend='triton' for {op} needs CUDA tensors (got {', '.join(devices)}); "
            "use backend='torch' on the CPU, or set TRITON_INTERPRET=1 to run the kernel "
            "in Triton's interpreter."
        )
    name = f"nerfmine.ops._triton.{op}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name not in (name, "triton") and not (err.name or "").startswith("triton."):
            raise
        missing = "Triton is not installed" if err.name != name else f"{name} does not exist"
        raise NerfmineError(
            f"backend='triton' for {op} is unavailable: {missing}. Install the 'triton' extra "
            "(pip install 'nerfmine[triton]') or use backend='torch'."
        ) from err
