"""The training loop of the single-task primitives (``nerfmine image``, ``nerfmine sdf``), and
what else their fits share: starting a run, resuming one, the checkpoint's layout and the run
metrics both write.

A fit trains to ``config.steps`` in chunks of ``config.eval_every`` steps; after each chunk it
evaluates (its metric: PSNR for an image, IoU for an SDF), records a curve point and writes its
checkpoint. The training clock counts only the steps.

Time mode (``config.seconds``, a time budget, or ``config.eval_at``, evaluation times, given):
training stops once the clock reaches ``seconds`` (or at ``steps``, still an upper bound) and
evaluates at each ``eval_at`` point (then instead of every ``eval_every`` steps), each curve
point recording the clock it was actually taken at and the points it stands for (``"eval_at"``).
To stop near a target the loop runs the steps in chunks of at most :data:`CHUNK_STEPS`,
synchronises the device after each and adds the chunk's time to the clock (the host's time
between chunks is not counted: a few microseconds of arithmetic). A chunk is cut to the steps
that the previous chunk's pace says remain before the next target (at least one; the first
chunk after a start or an evaluation is a single step, to measure the pace), so a target is
passed by about one step and by at most :data:`CHUNK_STEPS` steps if the steps slow down
suddenly, plus one device synchronisation. One exception: a step that compiles kernels
(Triton, on a cold start) lasts as long as the compilation, and the clock passes every point
that falls inside it; those points share one evaluation. The synchronisations cost a little
speed on a GPU (the queue drains every few steps), which the clock includes.

The run folder is held with
:class:`~nerfmine.run_folder.RunLock` while the loop runs, and SIGINT or SIGTERM stops it
between steps after a checkpoint, raising :class:`~nerfmine.errors.TrainingInterrupted` with
the ``--resume`` command (docs/design.md, "Robustness").

A fit class mixes in :class:`FitLoop`, names the class attributes listed there and provides
``__init__(config, source_path, run_dir)`` (which calls :meth:`FitLoop._start` first, builds
``field`` and then calls :meth:`FitLoop._start_training`), ``train_step()``,
``_source_state()`` (the path and hash of the fitted file, and what else the checkpoint
records of it), ``_evaluate_point() -> (value, payload)`` and
``_write_outputs(value, payload) -> metrics`` (which calls ``_save()``, builds metrics.json
around :meth:`FitLoop._run_metrics` and writes it with :meth:`FitLoop._write_metrics`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from nerfmine.errors import ConfigError, DataError, TrainingInterrupted
from nerfmine.image.io import file_sha256
from nerfmine.miner import HardSampleMiner
from nerfmine.optim import NGPAdam
from nerfmine.provenance import device_name, git_commit
from nerfmine.run_folder import RunLock, atomic_write_text, remove_stale_temporaries

CHUNK_STEPS = 8
"""Most steps between two readings of the clock in time mode (see the module docstring): few
enough that a target is passed by little even when the pace estimate fails, enough that the
device's queue rarely drains."""


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
    """The loop, start, resume and checkpoint of a single-task fit (see the module docstring
    for what a fit provides). :meth:`create` starts a fit, :meth:`resume` continues one;
    :meth:`train` trains to ``config.steps`` and writes the folder's files."""

    COMMAND = ""  # the subcommand, for messages: "image", "sdf"
    METRIC = ""  # the curve's metric key: "psnr", "iou"
    KIND = ""  # the checkpoint's "kind": "nerfmine-image", "nerfmine-sdf"
    SOURCE = ""  # the fitted file, in messages and as its checkpoint key: "image", "mesh"
    CONFIG_CLASS: Any = None  # ImageConfig, SdfConfig
    CONFIG_KEY = ""  # the config's checkpoint key, "image_config": "config" is a NeRF run's
    WRONG_KIND = ""  # why resume refuses a checkpoint of another kind, after its path
    RESUMABLE: tuple[str, ...] = ()  # the settings a resume may change
    RESUMABLE_FLAGS = ""  # their flags, for the message when another one changes
    #: The training clock's source, in seconds (tests give a fit a fake one).
    clock_source: Callable[[], float] = staticmethod(time.perf_counter)

    # ------------------------------------------------------------------ construction

    def _start(self, config: Any, run_dir: Path) -> None:
        """The config, the run folder, the device and the backend ("auto": triton on CUDA,
        torch elsewhere)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        self.backend = config.backend
        if self.backend == "auto":
            self.backend = "triton" if self.device.type == "cuda" else "torch"

    def _start_training(self, l2_reg: float) -> None:
        """Adam over the field's table and MLP, the miner (none when mining is "none"), the one
        generator of every draw (seeded by ``config.seed``) and an empty curve at step 0."""
        config = self.config
        self.optimizer = NGPAdam([self.field.table], self.field.mlp_parameters(), lr=config.lr,
                                 betas=config.betas, eps=config.eps, l2_reg=l2_reg,
                                 backend=self.backend)
        self.miner = HardSampleMiner().to(self.device) if config.mining != "none" else None
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.clock = 0.0
        self.curve: list[dict[str, Any]] = []

    @classmethod
    def create(cls, config: Any, source_path: Path, run_dir: Path) -> Any:
        """A new fit of ``source_path`` into ``run_dir``; a folder that already holds a run's
        checkpoint is refused (``--resume`` continues that run)."""
        if (Path(run_dir) / CHECKPOINT_NAME).exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume "
                              f"{run_dir} or choose another -o")
        return cls(config, source_path, run_dir)

    @classmethod
    def resume(cls, run_dir: Path, overrides: dict[str, Any] | None = None,
               source_path: Path | None = None) -> Any:
        """Continue the run in ``run_dir``; ``overrides`` may change only the
        :attr:`RESUMABLE` settings; ``source_path`` replaces a moved file (same bytes). The
        file's hash is checked before the fit is built (an SDF's ground truth takes long)."""
        path = Path(run_dir) / CHECKPOINT_NAME
        state = load_checkpoint(path)
        if state.get("kind") != cls.KIND:
            raise ConfigError(f"{path}: {cls.WRONG_KIND}")
        changed = sorted(set(overrides or {}) - set(cls.RESUMABLE))
        if changed:
            raise ConfigError(f"--resume keeps the run's config; {', '.join(changed)} cannot "
                              f"change (only {cls.RESUMABLE_FLAGS})")
        config = cls.CONFIG_CLASS.from_dict({**state[cls.CONFIG_KEY], **(overrides or {})},
                                            str(path))
        _check_new_points(state, state[cls.CONFIG_KEY], config)
        source = state[cls.SOURCE]
        source_path = Path(source_path or source["path"])
        if not source_path.is_file():
            raise DataError(f"{source_path}: the run's {cls.SOURCE} is not there any more; "
                            f"pass it again: nerfmine {cls.COMMAND} {cls.SOURCE.upper()} "
                            f"--resume {run_dir}")
        if file_sha256(source_path) != source["sha256"]:
            raise DataError(f"{source_path}: not the {cls.SOURCE} this run was fitting (its "
                            f"content changed); pass the original {cls.SOURCE}, or start a "
                            "new run")
        fit = cls(config, source_path, run_dir)
        fit._load_state(state)
        return fit

    def _load_state(self, state: dict[str, Any]) -> None:
        """The trained state of a checkpoint: the weights, Adam, the miner, the generator,
        the step, the clock and the curve."""
        self.field.load_state_dict(state["field"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.miner is not None:
            self.miner.load_state_dict(state["miner"])
        self.generator.set_state(state["generator"])
        self.step, self.clock, self.curve = state["step"], state["clock"], list(state["curve"])

    # ------------------------------------------------------------------ checkpoint, metrics

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's content: everything a bit-exact resume on the same device needs."""
        return {
            "kind": self.KIND,
            self.CONFIG_KEY: self.config.to_dict(),
            self.SOURCE: self._source_state(),
            **self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "miner": self.miner.state_dict() if self.miner is not None else {},
            "generator": self.generator.get_state(),
            "step": self.step,
            "clock": self.clock,
            "curve": self.curve,
        }

    def _model_state(self) -> dict[str, Any]:
        """The checkpoint's weights (a fit with more of them, such as an EMA, adds those)."""
        return {"field": self.field.state_dict()}

    def _run_metrics(self) -> dict[str, Any]:
        """metrics.json's entries of every fit: where and how it ran, and how fast."""
        return {
            "device": device_name(self.device),
            "commit": git_commit(),
            "backend": self.backend,
            "mining": self.config.mining,
            "preset": self.config.preset,
            "steps": self.step,
            "training_seconds": self.clock,
            "steps_per_second": self.step / max(self.clock, 1e-9),
        }

    def _write_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """metrics.json, written atomically; returns ``metrics`` (what :meth:`train` returns)."""
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics

    # ------------------------------------------------------------------ the loop

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())

    def warm_up(self, steps: int) -> float:
        """Run ``steps`` training steps, then put the fit back as it was (the checkpoint's
        state: weights, Adam, miner, generator, step, clock, curve). The kernels are then
        compiled (Triton, on a cold start) and the memory pools filled, so that the clock of
        the :meth:`train` that follows measures warm steps: the hook of benchmarks that report
        warm figures (benchmark-protocol.md). Returns the wall seconds of the steps."""
        saved = copy.deepcopy(self.state_dict())
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        self._sync()
        seconds = time.perf_counter() - start
        self._load_state(saved)
        return seconds

    def _add_point(self, value: float, loss: float | None, due: list[float]) -> None:
        fraction = self.miner.last_fraction.item() if self.miner is not None else None
        point = {"clock": self.clock, "step": self.step, self.METRIC: value, "loss": loss,
                 "hard_fraction": fraction}
        if self.config.eval_at:
            point["eval_at"] = due  # the eval_at points this evaluation stands for
        self.curve.append(point)

    # ------------------------------------------------------------------ budget and targets

    def budget_spent(self) -> bool:
        """Whether training is over: ``config.steps`` reached, or the clock at
        ``config.seconds``."""
        seconds = self.config.seconds
        return self.step >= self.config.steps or (seconds is not None and self.clock >= seconds)

    def pending_points(self) -> list[float]:
        """The ``config.eval_at`` points not evaluated yet (those no curve point stands for), in
        order. One whose time the clock has passed (a run stopped between passing it and
        evaluating) is evaluated as soon as training continues."""
        done = {p for point in self.curve for p in point.get("eval_at", ())}
        return [p for p in self.config.eval_at if p not in done]

    def _next_stop_step(self) -> int:
        """The step the next chunk of training ends at, at the latest: ``config.steps``, or
        the next multiple of ``eval_every`` (unless ``eval_at`` sets the points)."""
        if self.config.eval_at:
            return self.config.steps
        every = self.config.eval_every
        return min(self.config.steps, (self.step // every + 1) * every)

    def _train_steps(self, stop_step: int, stopped: list[int], loss: torch.Tensor) -> torch.Tensor:
        """Steps to ``stop_step`` (step mode: one device synchronisation at each end);
        returns the last loss."""
        self._sync()
        start = self.clock_source()
        while self.step < stop_step and not stopped:
            loss = self.train_step()
        self._sync()
        self.clock += self.clock_source() - start
        return loss

    def _train_timed(self, stop_step: int, stopped: list[int], loss: torch.Tensor) -> torch.Tensor:
        """Steps in chunks until ``stop_step``, the budget or the next pending point (time
        mode; the module docstring says how far it can overshoot); returns the last loss."""
        pending = self.pending_points()
        stop_clock = min(self.config.seconds or math.inf, pending[0] if pending else math.inf)
        per_step = None  # seconds per step of the last chunk
        while self.step < stop_step and self.clock < stop_clock and not stopped:
            chunk = 1
            if per_step is not None:
                chunk = min(CHUNK_STEPS, stop_step - self.step)
                if per_step > 0 and math.isfinite(stop_clock):
                    chunk = max(1, min(chunk, math.ceil((stop_clock - self.clock) / per_step)))
            self._sync()
            start = self.clock_source()
            done = 0
            while done < chunk and not stopped:
                loss = self.train_step()
                done += 1
            self._sync()
            elapsed = self.clock_source() - start
            self.clock += elapsed
            per_step = elapsed / max(done, 1)
        return loss

    # ------------------------------------------------------------------ the loop

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` or ``config.seconds`` of training clock (the clock
        excludes evaluations), evaluating every ``config.eval_every`` steps or at the
        ``config.eval_at`` times, then write the folder's files; returns metrics.json's dict.
        Holds the folder's lock meanwhile. The checkpoint is written at every evaluation
        point; SIGINT or SIGTERM stops between steps after a checkpoint, with
        :class:`TrainingInterrupted` (``--resume`` continues)."""
        with RunLock(self.run_dir), stop_requests() as stopped:
            remove_stale_temporaries(self.run_dir)
            atomic_write_text(self.run_dir / "config.json",
                              json.dumps(self.config.to_dict(), indent=2) + "\n")
            timed = self.config.seconds is not None or bool(self.config.eval_at)
            loss = torch.zeros(())
            last = None  # (value, payload) of an evaluation at the current step
            while not self.budget_spent():
                last = None  # a render is not held on to while training goes on
                stop_step = self._next_stop_step()
                if timed:
                    loss = self._train_timed(stop_step, stopped, loss)
                else:
                    loss = self._train_steps(stop_step, stopped, loss)
                if stopped:
                    self._save()
                    raise TrainingInterrupted(
                        f"{self.COMMAND} fit interrupted at step {self.step}; the checkpoint is "
                        f"in {self.run_dir}. Continue with: nerfmine {self.COMMAND} --resume "
                        f"{self.run_dir}")
                due = [p for p in self.pending_points() if p <= self.clock]
                if not due and (self.config.eval_at or self.step < stop_step):
                    continue  # the budget ended the chunk: the end's evaluation follows
                last = self._evaluate_point()
                self._add_point(last[0], float(loss), due)
                self._save()
                if progress is not None:
                    progress(self.curve[-1])
            due = [p for p in self.pending_points() if p <= self.clock]
            if last is None:
                last = self._evaluate_point()
            if due or not self.curve or self.curve[-1]["step"] != self.step:
                self._add_point(last[0], None, due)
            return self._write_outputs(*last)


def _check_new_points(state: dict[str, Any], saved: dict[str, Any], config: Any) -> None:
    """A resume that adds ``eval_at`` points the run's clock has already passed is refused:
    they can no longer be evaluated at their time. (A point of the run's own config that was
    passed but not evaluated, the run having stopped in between, is evaluated at once.)"""
    done = {p for point in state["curve"] for p in point.get("eval_at", ())}
    own = set(saved.get("eval_at", ()))
    behind = [p for p in config.eval_at if p <= state["clock"] and p not in own | done]
    if behind:
        raise ConfigError(f"--eval-at {', '.join(f'{p:g}' for p in behind)}: the run's training "
                          f"clock is already at {state['clock']:.1f} s, so these points can no "
                          "longer be evaluated; give points after it")
