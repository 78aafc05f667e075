"""Atomic checkpoint files, and the one path by which checkpoints of older nerfmine load.

A checkpoint is written to a temporary file in the same folder, flushed to disk, and then
renamed over the previous one (os.replace is atomic on POSIX and Windows), so a run killed at
any moment leaves either the old or the new checkpoint whole, never a half-written file.

:func:`load_checkpoint` returns the state migrated to today's layout (:func:`migrate`), so that
every reader (resume, eval, render, export, view) sees one format.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nerfmine.config import upgrade_layout
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
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error if it can't be;
    a run's config in it is migrated to today's layout (:func:`migrate`)."""
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
    if isinstance(state.get("config"), dict):
        migrate(state, where=str(path))
    return state


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """:func:`load_checkpoint` of a run's checkpoint (or a saved scene): one with a config."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise ConfigError(f"{path}: a nerfmine checkpoint without a run config; pass the folder "
                          "of a run that 'nerfmine train' wrote")
    return state


def migrate(state: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's state as today's code reads it (the same dict, updated in place).

    The settings a run recorded keep their meaning when a later version changes a default:

    - no ``data.aabb_scale`` (written before occupancy cascades): the run modelled the unit
      cube, aabb_scale 1;
    - no ``train.subpixel`` (written before it existed): the run drew random points of its
      pixels, subpixel True;
    - config layout 1 (marching, optimizer and evaluation settings in ``train``): moved to the
      ``march``, ``optim`` and ``eval`` sections (:func:`nerfmine.config.upgrade_layout`).
    """
    config = state["config"]
    data = config.setdefault("data", {})
    if data.get("aabb_scale") is None:
        data["aabb_scale"] = 1.0
    config.setdefault("train", {}).setdefault("subpixel", True)
    state["config"], _ = upgrade_layout(config, where=where)
    return state
