"""Checkpoint files: written atomically, loaded safely, checked against a content hash, and
the one path by which checkpoints of older nerfmine load.

A checkpoint is written through :func:`nerfmine.run_folder.atomic_write` (a temporary file of
the same folder, flushed and renamed over the previous one), so a run killed at any moment
leaves either the old or the new checkpoint whole, and a full disk leaves the old one and a
clear error.

What a checkpoint says about itself: ``format_version`` (2 since checkpoints carry a hash; 1
before) and ``content_sha256``, a SHA-256 over every tensor's dtype, shape and bytes and every
other value in key order (:func:`content_digest`), recomputed on load: a file whose bytes
changed after it was written is refused, not trained on.

Loading never runs code from the file: ``torch.load(..., weights_only=True)`` unpickles only
tensors, numbers, strings and containers of them (PyTorch's restricted unpickler), which is all
a checkpoint holds. :func:`load_checkpoint` returns the state migrated to today's layout
(:func:`migrate`), so that every reader (resume, eval, render, export, view) sees one format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from nerfmine.config import _SECTIONS, upgrade_layout
from nerfmine.errors import ConfigError
from nerfmine.run_folder import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before content hashes


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's state: tensors by dtype, shape and bytes (wherever they
    live), dict entries in key order, other values by type and repr."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        if t.numel():
            digest.update(t.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors, numbers, strings and containers of them, "
                        f"not {type(value).__name__}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, dicts, lists) to ``path`` atomically, with
    its format version and content hash. A failed write raises
    :class:`~nerfmine.errors.OutputError` and leaves the previous file intact."""
    payload = {"format_version": FORMAT_VERSION, "content_sha256": content_digest(state),
               **state}
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error if it can't be
    (missing, not a checkpoint, of an unknown format, or changed since it was written); a
    run's config in it is migrated to today's layout (:func:`migrate`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint here; a run folder holds {CHECKPOINT_NAME} "
                          "once its first checkpoint is written")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ConfigError(f"{path}: not a readable nerfmine checkpoint ({reason[:300]}); it "
                          "is damaged or not a checkpoint (nerfmine loads only tensors and "
                          "plain values, never code)") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise ConfigError(f"{path}: not a nerfmine checkpoint (no format_version)")
    version = state.pop("format_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ConfigError(f"{path}: checkpoint format {version!r}, this nerfmine reads formats "
                          f"{', '.join(map(str, READABLE_VERSIONS))}"
                          + ("; it was written by a newer nerfmine: upgrade" if newer else ""))
    if version >= 2:
        recorded = state.pop("content_sha256", None)
        if recorded != content_digest(state):
            raise ConfigError(f"{path}: the checkpoint's content does not match its hash (the "
                              "file changed after it was written: a damaged disk or copy); "
                              "it cannot be trusted. Use an intact copy of the run")
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
    for section, value in config.items():
        if section in _SECTIONS and not isinstance(value, dict):
            raise ConfigError(f"{where}: the run config's section '{section}' must be an "
                              f"object of its fields, got {type(value).__name__}; the "
                              "checkpoint is damaged or was not written by nerfmine")
    data = config.setdefault("data", {})
    if data.get("aabb_scale") is None:
        data["aabb_scale"] = 1.0
    config.setdefault("train", {}).setdefault("subpixel", True)
    state["config"], _ = upgrade_layout(config, where=where)
    return state
