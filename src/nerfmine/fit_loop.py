"""The training loop of the single-task primitives (``nerfmine image``, ``nerfmine sdf``).

A fit trains to ``config.steps`` in chunks of ``config.eval_every`` steps; after each chunk it
evaluates (its metric: PSNR for an image, IoU for an SDF), records a curve point and writes its
checkpoint. The training clock counts only the steps. The run folder is held with
:class:`~nerfmine.run_folder.RunLock` while the loop runs, and SIGINT or SIGTERM stops it
between steps after a checkpoint, raising :class:`~nerfmine.errors.TrainingInterrupted` with
the ``--resume`` command (docs/design.md, "Robustness").

A fit class mixes in :class:`FitLoop` and provides ``run_dir``, ``config`` (``steps``,
``eval_every``, ``to_dict()``), ``device``, ``step``, ``clock``, ``curve``, ``miner`` (or None),
``train_step()``, ``state_dict()``, ``_evaluate_point() -> (value, payload)`` and
``_write_outputs(value, payload) -> metrics``, and names its ``COMMAND`` and ``METRIC``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from nerfmine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from nerfmine.errors import TrainingInterrupted
from nerfmine.run_folder import RunLock, atomic_write_text, remove_stale_temporaries


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when there is a GPU, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """A list that SIGINT/SIGTERM append to while the block runs (main thread only; elsewhere
    the list stays empty), the previous handlers restored after it."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class FitLoop:
    """The loop of a single-task fit (see the module docstring for what a fit provides)."""

    COMMAND = ""  # the subcommand, for the resume hint: "image", "sdf"
    METRIC = ""  # the curve's metric key: "psnr", "iou"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())

    def _add_point(self, value: float, loss: float | None) -> None:
        fraction = self.miner.last_fraction.item() if self.miner is not None else None
        self.curve.append({"clock": self.clock, "step": self.step, self.METRIC: value,
                           "loss": loss, "hard_fraction": fraction})

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` (the clock excludes evaluations), then write the folder's
        files; returns metrics.json's dict. Holds the folder's lock meanwhile. The checkpoint
        is written at every evaluation point; SIGINT or SIGTERM stops between steps after a
        checkpoint, with :class:`TrainingInterrupted` (``--resume`` continues)."""
        with RunLock(self.run_dir), stop_requests() as stopped:
            remove_stale_temporaries(self.run_dir)
            atomic_write_text(self.run_dir / "config.json",
                              json.dumps(self.config.to_dict(), indent=2) + "\n")
            every = self.config.eval_every
            loss = torch.zeros(())
            while self.step < self.config.steps:
                stop = min(self.config.steps, (self.step // every + 1) * every)
                self._sync()
                start = time.perf_counter()
                while self.step < stop and not stopped:
                    loss = self.train_step()
                self._sync()
                self.clock += time.perf_counter() - start
                if stopped:
                    self._save()
                    raise TrainingInterrupted(
                        f"{self.COMMAND} fit interrupted at step {self.step}; the checkpoint is "
                        f"in {self.run_dir}. Continue with: nerfmine {self.COMMAND} --resume "
                        f"{self.run_dir}")
                value, _ = self._evaluate_point()
                self._add_point(value, float(loss))
                self._save()
                if progress is not None:
                    progress(self.curve[-1])
            value, payload = self._evaluate_point()
            if not self.curve or self.curve[-1]["step"] != self.step:
                self._add_point(value, None)
            return self._write_outputs(value, payload)
