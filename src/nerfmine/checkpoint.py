"""Atomic checkpoint files.

A checkpoint is written to a temporary file in the same folder, flushed to disk, and then
renamed over the previous one (os.replace is atomic on POSIX and Windows), so a run killed at
any moment leaves either the old or the new checkpoint whole, never a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nerfmine.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, dicts) to ``path`` atomically."""
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error if it can't be."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint here; a run folder holds {CHECKPOINT_NAME} "
                          "once its first checkpoint is written")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ConfigError(f"{path}: not a readable nerfmine checkpoint ({type(exc).__name__}: "
                          f"{exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a nerfmine checkpoint of format {FORMAT_VERSION}")
    return state
