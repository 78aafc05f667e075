"""The training loop: clock, budget, evaluation points, checkpoints, signals and hooks.

``Trainer(config, run_dir).train()`` loads the training split, builds the
:class:`~nerfmine.scene.TrainedScene` and the :class:`~nerfmine.train_step.TrainStep`, and steps
until the budget (seconds of training clock or steps) is spent, evaluating at the configured
points (:class:`~nerfmine.evaluator.Evaluator`) and writing the run folder: ``config.json``,
``checkpoint.pt`` (atomic), ``metrics.json``, ``psnr_curve.png`` and the final renders.
``Trainer.resume(run_dir)`` continues a run from its last checkpoint.

The training clock counts only the steps: it is paused (after a device synchronisation) for
evaluation, checkpoints and plots, as ../shared/docs/benchmark-protocol.md defines.

What a run promises its user (docs/design.md, "Robustness"): one process writes a run folder at
a time (:class:`~nerfmine.run_folder.RunLock`); every file in it is written atomically; SIGINT
or SIGTERM is acted on between steps and between the network batches of an evaluation: the run
checkpoints and stops with :class:`TrainingInterrupted` (a second signal stops at once, keeping
the last checkpoint); the training state is checkpointed before the final evaluation, so no
signal then loses the run; a step with a NaN or inf gradient changes no weight and is counted
(``metrics.json``: ``nonfinite_steps``), and :data:`MAX_NONFINITE_STREAK` of them in a row stop
the run with :class:`~nerfmine.errors.TrainingStopped` after its checkpoint.

Benchmarks and the viewer attach through :attr:`Trainer.hooks` (progress callbacks and a guard
held around each step) and :attr:`Trainer.step_fn` (stage marks, CUDA graphs), never by
replacing methods or private attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nerfmine.checkpoint import CHECKPOINT_NAME, load_run_checkpoint, save_checkpoint
from nerfmine.config import (
    RunConfig,
    check_eval_points,
    check_resume_compatible,
    config_from_dict,
    merge_overrides,
    resolve_for_scene,
)
from nerfmine.data import SceneData, load_scene
from nerfmine.data.demo import demo_scene_path
from nerfmine.data.rays import RaySampler
from nerfmine.distributed import RAY_SEED_STRIDE, Ranks
from nerfmine.errors import ConfigError, TrainingInterrupted, TrainingStopped
from nerfmine.evaluator import SSIM_IMPLEMENTATION, Evaluator, plot_curve, write_metrics
from nerfmine.lagged import LaggedHostValue
from nerfmine.memory import fit_memory
from nerfmine.metrics import LPIPS_NOT_MEASURED, EvalResult
from nerfmine.provenance import device_name, git_commit
from nerfmine.run_folder import RunLock, remove_stale_temporaries
from nerfmine.scene import TrainedScene
from nerfmine.train_step import StepStats, TrainStep

# A run stops (after its checkpoint) when this many steps in a row had a NaN or inf gradient:
# none of them changed the weights, and fp16 loss scaling has long run out of halvings by then.
MAX_NONFINITE_STREAK = 64


class _StopRequested(Exception):
    """Raised inside an evaluation when SIGINT or SIGTERM arrived; the loop checkpoints."""


@dataclass
class TrainerHooks:
    """Where code outside the trainer attaches (nerfstudio's callbacks, in small)."""

    progress: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    """Called from the training thread about twice a second with display values (step,
    clock, loss, samples/s, PSNR so far, fraction of the budget, time left), after every
    evaluation with ``{"event": "eval", ...}`` and at the end with ``"done": True``."""
    step_guard: AbstractContextManager = field(default_factory=contextlib.nullcontext)
    """Held around every training step (the viewer's lock on a GPU, so that no render work is
    enqueued while a step is captured as a CUDA graph). Must be reusable (a Lock is)."""


def resolve_data_path(config: RunConfig) -> Path:
    """The scene a config trains on: ``data.path``, or the bundled demo scene."""
    return Path(config.data.path) if config.data.path else demo_scene_path()


def _per_rank(config: RunConfig, world: int) -> RunConfig:
    """The step's config on one of ``world`` ranks: the samples per step and the ray counts
    divided among them (the union's batch stays ``train.target_samples``)."""
    t = config.train
    train = dataclasses.replace(
        t, target_samples=max(1, t.target_samples // world),
        initial_rays=max(t.ray_granularity, t.initial_rays // world),
        max_rays=max(t.ray_granularity, t.max_rays // world))
    return dataclasses.replace(config, train=train)


class Trainer:
    """Trains a scene into ``run_dir``.

    ``train_data`` replaces the training split the config names (a benchmark's subset of
    views); by default it is loaded after the memory check (:func:`nerfmine.memory.fit_memory`),
    which given data skips (no estimate is recorded, ``memory_fit`` has no effect).
    """

    def __init__(self, config: RunConfig, run_dir: Path, train_data: SceneData | None = None):
        self.run_dir = Path(run_dir)
        self.notes: list[str] = []
        self.data_root = resolve_data_path(config)
        if train_data is None:
            # Memory estimate from the image headers; may stop, or (--auto-fit) change where
            # the images live or their downscale. Recorded in config.data.memory_estimate.
            config = fit_memory(config, self.data_root, self.notes)
            d = config.data
            train_data = load_scene(self.data_root, d.train_split, d.downscale,
                                    holdout_every=d.holdout_every, skip_missing=d.skip_missing,
                                    min_sharpness=d.min_sharpness)
        self.notes += train_data.notes
        config, notes = resolve_for_scene(config, train_data)
        self.notes += notes
        device = torch.device(config.device)
        # Data-parallel runs (torchrun; nerfmine.distributed): each rank trains on its shard of
        # the images with its share of the samples per step, its own rays' random stream,
        # and the same weights, occupancy draws and decisions as rank 0.
        self.ranks = Ranks.current()
        settings = config.to_dict()
        settings["data"].pop("memory_estimate", None)  # each process's own measurement
        self.ranks.check_same("configs or data", {
            "config": settings, "training images": len(train_data),
            "image size": [train_data.width, train_data.height]})
        seed = config.train.seed
        torch.manual_seed(seed)  # graph steps draw from the default generators
        self.scene = TrainedScene.create(config, with_ema=True)
        cameras = self.scene.to_unit(train_data.cameras())
        occupancy = self.scene.occupancy
        occupancy.set_visible(cameras.visible(occupancy.cell_centers().to(device)))
        images, step_config, ray_seed = train_data.images, config, seed
        if self.ranks.several:
            shard = self.ranks.shard(len(train_data))
            if not shard:
                raise ConfigError(f"{len(train_data)} training images cannot be shared by "
                                  f"{self.ranks.world} processes; start at most "
                                  f"{len(train_data)}")
            images, cameras = images[shard], cameras.select(shard)
            step_config = _per_rank(config, self.ranks.world)
            ray_seed = seed + self.ranks.rank * RAY_SEED_STRIDE
            torch.manual_seed(ray_seed)
            self.notes.append(f"data-parallel: rank {self.ranks.rank} of {self.ranks.world}, "
                              f"{len(shard)} of {len(train_data)} training images, "
                              f"{step_config.train.target_samples} samples a step")
        rays = RaySampler(images, cameras, device, seed=ray_seed,
                          subpixel=config.train.subpixel,
                          images_on_host=config.data.images_on_host)
        if rays.on_host and not self.ranks.several:
            train_data.images = rays.images  # keep the pinned copy only
        self.notes += rays.notes
        self.train_data = train_data
        self.step_fn = TrainStep(step_config, self.scene, rays,
                                 torch.Generator(device).manual_seed(ray_seed))
        if self.ranks.several:
            self.step_fn.exchange = self.ranks.exchange
            self.step_fn.occupancy_generator = torch.Generator(device).manual_seed(seed)
            self.step_fn.disable_graphs("data-parallel steps run eagerly: their collectives "
                                        "are not captured in CUDA graphs yet")
            self.ranks.broadcast_([*self.scene.field.parameters(), *self.scene.ema])
        self.evaluator = Evaluator(self.scene)
        self.hooks = TrainerHooks()
        self.next_checkpoint = config.train.checkpoint_every
        self.peak_train_bytes = 0
        self.setup_bytes = 0
        self._stop_signal: int | None = None
        self._streak = LaggedHostValue(0, torch.int64)
        # An evaluation point was reached but its evaluation was interrupted by a signal: the
        # resumed run evaluates first thing (the checkpoint is at that point's clock).
        self._eval_due = False

    # ------------------------------------------------------------------ views
    @property
    def config(self) -> RunConfig:
        return self.scene.config

    @property
    def device(self) -> torch.device:
        return self.scene.device

    @property
    def backend(self) -> str:
        return self.scene.backend

    @property
    def field(self):
        return self.scene.field

    @property
    def occupancy(self):
        return self.scene.occupancy

    @property
    def ema(self) -> list[torch.Tensor]:
        return self.scene.ema

    @property
    def miner(self):
        return self.step_fn.miner

    @property
    def optimizer(self):
        return self.step_fn.optimizer

    @property
    def generator(self) -> torch.Generator:
        return self.step_fn.generator

    @property
    def step(self) -> int:
        """Training steps done."""
        return self.scene.step

    @step.setter
    def step(self, value: int) -> None:
        self.scene.step = int(value)

    @property
    def clock(self) -> float:
        """Seconds of training clock so far."""
        return self.scene.clock

    @clock.setter
    def clock(self, value: float) -> None:
        self.scene.clock = float(value)

    @property
    def history(self) -> list[EvalResult]:
        return self.scene.history

    @property
    def n_rays(self) -> int:
        """The adaptive ray count, as the host last saw it."""
        return self.step_fn.ray_count.n_rays

    @property
    def eval_data(self) -> SceneData:
        return self.evaluator.data

    def mean_hard_fraction(self) -> float | None:
        return self.step_fn.mean_hard_fraction()

    def uses_cuda_graphs(self) -> bool:
        return self.step_fn.uses_cuda_graphs()

    # ------------------------------------------------------------------ steps
    def budget_fraction(self) -> float:
        """How much of the budget is spent (the learning-rate schedule's clock)."""
        t = self.config.train
        return self.clock / t.max_seconds if t.max_seconds else self.step / t.max_steps

    def train_step(self) -> StepStats:
        """One optimisation step at the schedule's learning rate; device statistics."""
        with self.hooks.step_guard:
            stats = self.step_fn(self.step, self.config.optim.lr_at(self.budget_fraction()))
        self.step += 1
        return stats

    @torch.no_grad()
    def evaluate(self, save_dir: Path | None = None) -> EvalResult:
        """PSNR and SSIM of the EMA weights on the evaluation split, over a white background.
        Progress goes to the progress hooks (``{"event": "eval_progress", "done", "total"}``);
        a stop signal ends it between network batches (raising _StopRequested)."""
        def progress(done: int, total: int) -> None:
            self._notify({"event": "eval_progress", "done": done, "total": total,
                          "step": self.step})

        return self.evaluator.evaluate(save_dir, self.mean_hard_fraction(), progress=progress,
                                       on_batch=self._check_stop)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**self.scene.state_dict(), **self.step_fn.state_dict(),
                "next_checkpoint": self.next_checkpoint,
                "peak_train_bytes": self.peak_train_bytes,
                "eval_due": self._eval_due,
                "world_size": self.ranks.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scene.load_state_dict(state)
        self.step_fn.load_state_dict(state)
        self.next_checkpoint = float(state["next_checkpoint"])
        self.peak_train_bytes = int(state["peak_train_bytes"])
        self._eval_due = bool(state.get("eval_due", False))  # absent before format 2
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.ranks.world:  # the ray count was one rank's share of the union's
            t = self.step_fn.config.train
            n_rays = int(state["n_rays"]) * saved_world // self.ranks.world
            self.step_fn.ray_count.load(min(max(n_rays, t.ray_granularity), t.max_rays))
        if self.ranks.several:  # rank 0's random streams were saved: each rank starts its own
            seed, step = self.config.train.seed, self.step
            ray_seed = seed + self.ranks.rank * RAY_SEED_STRIDE + step
            self.step_fn.generator.manual_seed(ray_seed)
            torch.manual_seed(ray_seed)
            self.step_fn.occupancy_generator.manual_seed(seed + step)

    def save(self) -> Path:
        """Write the checkpoint (rank 0 only in a data-parallel run: the ranks are one model)."""
        path = self.run_dir / CHECKPOINT_NAME
        if self.ranks.leader:
            save_checkpoint(path, self.state_dict())
        return path

    @classmethod
    def resume(cls, run_dir: Path, overrides: dict[str, Any] | None = None) -> Trainer:
        """Rebuild a trainer from ``run_dir``; ``overrides`` may change the budget and
        evaluation points, anything else must match the checkpoint's config."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        state = load_run_checkpoint(run_dir / CHECKPOINT_NAME)
        saved = config_from_dict(state["config"])
        config = saved
        if overrides:
            config = config_from_dict(merge_overrides(saved.to_dict(), overrides))
            check_resume_compatible(saved, config)
            if "eval_at" in overrides.get("train", {}):
                check_eval_points(config)
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{run_dir} was trained on CUDA; this machine has no CUDA GPU")
        trainer = cls(config, run_dir)
        trainer.load_state_dict(state)
        return trainer

    # ------------------------------------------------------------------ the loop
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pending_eval_points(self) -> list[float]:
        t = self.config.train
        done = {round(h.clock if t.max_seconds else h.step, 6) for h in self.history}
        now = self.clock if t.max_seconds else self.step
        return [p for p in sorted(set(t.eval_at)) if p > now and round(p, 6) not in done]

    def _install_signal_handlers(self) -> dict:
        """SIGINT/SIGTERM set :attr:`_stop_signal` (acted on between steps and evaluation
        batches); a second one restores the previous handlers and raises KeyboardInterrupt
        at once (an atomic write in progress is abandoned, the last checkpoint kept)."""
        previous = {}

        def handler(signum, frame):  # noqa: ARG001
            if self._stop_signal is None:
                self._stop_signal = signum
                return
            for sig, old in previous.items():
                signal.signal(sig, old)
            raise KeyboardInterrupt(f"signal {signum} received twice")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def _check_stop(self) -> None:
        """Raise _StopRequested when a stop signal has arrived (inside evaluations)."""
        if self._stop_signal is not None:
            raise _StopRequested

    def _interrupted(self, during: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"training interrupted {during} at step {self.step}; the checkpoint is in "
            f"{self.run_dir}. Continue with: nerfmine train --resume {self.run_dir}")

    def _check_nonfinite(self, exact: bool = False) -> None:
        """Stop the run (checkpoint, then TrainingStopped) when the last
        :data:`MAX_NONFINITE_STREAK` steps all had a NaN or inf gradient. The streak is read
        on the host a step or more late (no synchronisation), exactly with ``exact``."""
        streak_tensor = self.step_fn.nonfinite_streak
        if exact:
            self._streak.reset(int(streak_tensor.item()))
        else:
            self._streak.issue(streak_tensor)
        if self._streak.value < MAX_NONFINITE_STREAK:
            return
        self._sync()
        streak = int(streak_tensor.item())
        if streak < MAX_NONFINITE_STREAK:
            return
        self.save()
        raise TrainingStopped(
            f"training stopped at step {self.step}: the last {streak} steps had NaN or inf "
            "gradients, so none of them changed the weights; the checkpoint in "
            f"{self.run_dir} holds the weights from before them. Causes to look at: a "
            "learning rate too high for this scene (--lr), NaN or inf in the data (poses, "
            "intrinsics), or a numerical fault of the backend (try --backend torch).")

    def _notify(self, info: dict[str, Any]) -> None:
        for hook in self.hooks.progress:
            hook(info)

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to the budget, evaluating at the configured points; returns metrics.json's dict.

        ``progress`` is added to :attr:`hooks` ``.progress`` for this call.
        """
        if progress is not None:
            self.hooks.progress.append(progress)
        try:
            return self._train()
        finally:
            if progress is not None:
                self.hooks.progress.remove(progress)

    def _train(self) -> dict[str, Any]:
        # One writer per run folder: rank 0 of a data-parallel run; the others only train.
        lock = RunLock(self.run_dir).acquire() if self.ranks.leader else None
        try:
            if lock is not None:
                for stale in remove_stale_temporaries(self.run_dir):
                    self.notes.append(f"removed {stale.name}, left by a killed write")
            previous_handlers = self._install_signal_handlers()
            try:
                return self._train_locked()
            finally:
                for sig, old in previous_handlers.items():
                    signal.signal(sig, old)
        finally:
            if lock is not None:
                lock.release()

    def _train_locked(self) -> dict[str, Any]:
        t = self.config.train
        leader = self.ranks.leader
        if leader:
            self.config.save(self.run_dir / "config.json")
            self.evaluator.check()  # an unscorable evaluation split fails now, not later
        if self.device.type == "cuda":
            self._sync()
            self.setup_bytes = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        eval_points = self._pending_eval_points()
        if self._eval_due:
            eval_points.insert(0, -math.inf)
        unit_is_seconds = t.max_seconds is not None
        budget = t.max_seconds if unit_is_seconds else t.max_steps
        last_display = 0.0
        stats: StepStats | None = None
        # With CUDA graphs the whole loop (replays, occupancy updates, evaluations) runs on
        # the graphs' stream, so that one cuBLAS workspace serves it (StepGraphs.on_stream).
        with self.step_fn.on_stream():
            segment_start = time.perf_counter()
            clock_at_segment = self.clock
            while True:
                now_clock = clock_at_segment + (time.perf_counter() - segment_start)
                if self.ranks.several:  # rank 0's clock, and a stop any rank was asked for
                    now_clock, stop = self.ranks.agree(now_clock, self._stop_signal is not None,
                                                       self.device)
                    if stop and self._stop_signal is None:
                        self._stop_signal = signal.SIGTERM
                now = now_clock if unit_is_seconds else self.step
                if now >= budget:
                    break
                due_eval = bool(eval_points) and now >= eval_points[0]
                due_ckpt = now_clock >= self.next_checkpoint
                if due_eval or due_ckpt or self._stop_signal is not None:
                    self._sync()
                    self.clock = clock_at_segment + (time.perf_counter() - segment_start)
                    self._pause_memory()
                    self._check_nonfinite(exact=True)
                    if due_eval:
                        while eval_points and now >= eval_points[0]:
                            eval_points.pop(0)
                        self._eval_due = True  # until it is recorded (kept in the checkpoint)
                        if self._stop_signal is None and leader:
                            try:
                                self._evaluate_and_record()
                                self._eval_due = False
                            except _StopRequested:
                                pass  # checkpointed below; the resumed run evaluates first
                    self.next_checkpoint = self.clock + t.checkpoint_every
                    self.save()
                    if self._stop_signal is not None:
                        raise self._interrupted("during training")
                    self._resume_memory()
                    segment_start = time.perf_counter()
                    clock_at_segment = self.clock
                self.clock = now_clock  # the learning-rate schedule reads it
                stats = self.train_step()
                wall = time.perf_counter()
                if wall - last_display > 0.5:
                    last_display = wall
                    self._check_nonfinite()
                    if self.hooks.progress:
                        self.clock = clock_at_segment + (wall - segment_start)
                        self._notify(self._display(stats))
            self._sync()
            self.clock = clock_at_segment + (time.perf_counter() - segment_start)
            self._pause_memory()
            self._check_nonfinite(exact=True)
            self.save()  # the trained state is safe before the final evaluation starts
            if self._stop_signal is not None:
                raise self._interrupted("at the end of training")
            if not leader:  # rank 0 evaluates and writes metrics.json
                return {"rank": self.ranks.rank, "steps": self.step}
            try:
                final = self._evaluate_and_record(final=True)
            except _StopRequested:
                raise self._interrupted("during the final evaluation (resume to finish "
                                        "it)") from None
            self._eval_due = False  # the final evaluation stands for an interrupted one
            self.save()
        metrics = self.write_metrics(final)
        if stats is not None:
            self._notify(self._display(stats) | {"done": True})
        return metrics

    def _display(self, stats: StepStats) -> dict[str, Any]:
        t = self.config.train
        info = {
            "step": self.step,
            "clock": self.clock,
            "loss": float(stats.loss),
            "samples_per_second": float(self.step_fn.total_samples) / max(self.clock, 1e-9),
            "psnr": self.history[-1].psnr if self.history else None,
            "fraction": self.budget_fraction(),
            "rays": self.n_rays,
        }
        if t.max_seconds:
            info["time_left"] = max(0.0, t.max_seconds - self.clock)
        else:
            rate = self.step / max(self.clock, 1e-9)
            info["time_left"] = max(0, t.max_steps - self.step) / max(rate, 1e-9)
        if stats.hard_fraction is not None:
            info["hard_fraction"] = self.mean_hard_fraction()
        return info

    def _pause_memory(self) -> None:
        if self.device.type == "cuda":
            self.peak_train_bytes = max(self.peak_train_bytes,
                                        torch.cuda.max_memory_allocated(self.device))

    def _resume_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _evaluate_and_record(self, final: bool = False) -> EvalResult:
        save = self.config.eval.save_renders
        if self.history and self.history[-1].step == self.step and (not final or not save):
            return self.history[-1]
        save_dir = (self.run_dir / "renders" / self.config.data.eval_split
                    if final and save else None)
        result = self.evaluate(save_dir=save_dir)
        if self.history and self.history[-1].step == self.step:
            self.history[-1] = result
        else:
            self.history.append(result)
        self._notify({"event": "eval", "clock": result.clock, "step": result.step,
                      "psnr": result.psnr, "ssim": result.ssim})
        plot_curve(self.run_dir, self.history, title=f"{self.config.mining} / {self.backend}")
        return result

    def write_metrics(self, final: EvalResult) -> dict[str, Any]:
        t = self.config.train
        memory = None
        if self.device.type == "cuda":
            memory = {
                "total_peak_bytes": self.peak_train_bytes,
                "after_setup_bytes": self.setup_bytes,
                "training_increment_bytes": self.peak_train_bytes - self.setup_bytes,
            }
        samples = float(self.step_fn.total_samples)
        metrics = {
            "scene": str(self.data_root),
            "split": self.config.data.eval_split,
            "background": "white",
            "device": device_name(self.device),
            "commit": git_commit(),
            "backend": self.backend,
            "mining": self.config.mining,
            "preset": self.config.preset,
            "training_seconds": self.clock,
            "steps": self.step,
            "samples_per_second": samples / max(self.clock, 1e-9),
            "steps_per_second": self.step / max(self.clock, 1e-9),
            "peak_gpu_memory": memory if memory else "not measured (not a CUDA run)",
            "mean_hard_fraction": self.mean_hard_fraction(),
            "nonfinite_steps": int(self.step_fn.nonfinite_steps.item()),
            "psnr": final.psnr,
            "ssim": final.ssim,
            "ssim_implementation": SSIM_IMPLEMENTATION,
            "lpips": LPIPS_NOT_MEASURED,
            "per_image": final.per_image,
            "curve": [h.summary() for h in self.history],
            "budget": {"max_steps": t.max_steps, "max_seconds": t.max_seconds},
        }
        write_metrics(self.run_dir, metrics)
        return metrics
