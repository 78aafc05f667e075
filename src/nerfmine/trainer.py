"""The training loop: Instant-NGP with optional online hard sample mining.

One step (see docs/design.md for the tensors):

1. occupancy-grid update on its schedule (chunked, never the memory peak);
2. draw rays from random training pixels, each over a random background colour;
3. march them into a packed buffer of fixed capacity (device-side counts);
4. baseline: forward with a graph on every sample, composite, mean per-ray L2, backward.
   mining: forward without a graph on every sample, closed-form output gradients, the miner's
   draw of b samples, forward with a graph on those only, backward injecting their gradients;
5. Adam (sparse on the table, L2 on the MLPs), EMA of the weights, adapt the ray count.

The training clock counts only the steps: it is paused (after a device synchronisation) for
evaluation, checkpoints and plots, as ../shared/docs/benchmark-protocol.md defines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from nerfmine.config import RunConfig, check_resume_compatible, config_from_dict
from nerfmine.data.blender import SceneData
from nerfmine.data.demo import demo_scene_path
from nerfmine.data.host_pixels import HostPixels
from nerfmine.data.transforms import load_capture
from nerfmine.errors import ConfigError, NerfmineError
from nerfmine.field import NGPField
from nerfmine.graphs import StepGraphs
from nerfmine.memory import fit_memory
from nerfmine.metrics import LPIPS_NOT_MEASURED, psnr, ssim
from nerfmine.miner import BUFFER_MULTIPLE, HardSampleMiner
from nerfmine.occupancy import OccupancyGrid
from nerfmine.ops.composite import composite, composite_output_grads
from nerfmine.ops.distortion import camera_rays
from nerfmine.ops.march import march_rays
from nerfmine.ops.packed import PackedSamples
from nerfmine.ops.rays import camera_frustum_mask, pixel_rays
from nerfmine.ops.scene_box import MAX_CASCADES, cascades_for_aabb_scale, default_cone_angle
from nerfmine.optim import DeviceLossScaler, NGPAdam
from nerfmine.provenance import device_name, git_commit
from nerfmine.render import RenderSettings, render_image, render_rays

WHITE = (1.0, 1.0, 1.0)
# A graph step rounds the mining buffer up to target_samples / this: few graphs, little slack.
GRAPH_BUFFER_BUCKETS = 64


class TrainingInterrupted(NerfmineError):
    """Raised after a checkpoint was written because the run got SIGINT or SIGTERM."""


@dataclass
class StepStats:
    """Device tensors of the last step (read them on the host only for display)."""

    loss: torch.Tensor
    n_samples: torch.Tensor
    hard_fraction: torch.Tensor | None = None


@dataclass
class EvalResult:
    clock: float
    step: int
    psnr: float
    ssim: float
    per_image: list[dict[str, Any]] = field(default_factory=list)
    mean_hard_fraction: float | None = None

    def summary(self) -> dict[str, Any]:
        return {"clock": self.clock, "step": self.step, "psnr": self.psnr, "ssim": self.ssim,
                "mean_hard_fraction": self.mean_hard_fraction}


def resolve_data_path(config: RunConfig) -> Path:
    return Path(config.data.path) if config.data.path else demo_scene_path()


class Trainer:
    """Owns the model, optimizer, occupancy grid, miner and the run folder.

    ``Trainer(config, run_dir).train()`` trains and evaluates; ``Trainer.resume(run_dir)``
    continues a killed run from its last checkpoint.
    """

    def __init__(self, config: RunConfig, run_dir: Path, load_train: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(config.device)
        self.backend = config.backend
        t = config.train
        self.data_root = resolve_data_path(config)
        self.train_data: SceneData | None = None
        self.notes: list[str] = []
        self._host_pixels: HostPixels | None = None
        if load_train:
            # Memory estimate from the image headers; may stop, or (--auto-fit) change where
            # the images live or their downscale. Recorded in config.data.memory_estimate.
            self.config = config = fit_memory(config, self.data_root, self.notes)
            self.train_data = self._load(config.data.train_split)
            self.notes += self.train_data.notes
            # Record the world-to-unit-cube transform the data applied, for renders and exports.
            applied = dataclasses.replace(
                config.data, scale=float(self.train_data.scale),
                offset=tuple(float(v) for v in self.train_data.offset))
            self.config = config = dataclasses.replace(config, data=applied)
        self.config = config = self._resolve_scene_box(config)
        self.aabb_scale = float(config.data.aabb_scale)
        self._eval_data: SceneData | None = None

        torch.manual_seed(t.seed)
        self.field = NGPField(config.model, backend=self.backend, seed=t.seed,
                              aabb_scale=self.aabb_scale).to(self.device)
        self.field.fused_inference = t.fused_inference_mlp  # applies under fp16 autocast only
        self.occupancy = OccupancyGrid(config.occupancy, aabb_scale=self.aabb_scale).to(
            self.device)
        self.miner = HardSampleMiner(config.miner).to(self.device)
        self.optimizer = NGPAdam([self.field.table], self.field.mlp_parameters(), lr=t.lr,
                                 betas=t.betas, eps=t.eps, l2_reg=t.l2_reg, backend=self.backend)
        self.optimizer.init_state()  # the moments count as setup memory, not training memory
        if self.backend == "triton":
            # The fp16 lookup copy of the table, written by each Adam step (setup memory).
            self.optimizer.set_fp16_copy(self.field.table, self.field.keep_table_fp16())
        # The table's gradient lives in one preallocated buffer (setup memory, like the
        # moments): every backward of a step adds into it (see NGPField.table_grad_sink).
        self._table_grad = torch.zeros_like(self.field.table)
        self.field.table_grad_sink = self._table_grad
        self.ema = [p.detach().clone() for p in self.field.parameters()]
        self.use_amp = bool(t.mixed_precision and self.device.type == "cuda")
        self.scaler = DeviceLossScaler(self.device, enabled=self.use_amp)
        self.generator = torch.Generator(self.device).manual_seed(t.seed)
        # CUDA-graph steps (see train_step); their random numbers come from the default CUDA
        # generator, seeded by torch.manual_seed above and checkpointed with the run. Pixels
        # streamed from the host (--images-on-host) are gathered on the host each step, which
        # a graph cannot replay: those runs launch their steps eagerly.
        self._camera_cache: dict[int, tuple] = {}
        self._graphs = None
        if (t.cuda_graphs and self.device.type == "cuda" and self.backend == "triton"
                and load_train and not config.data.images_on_host):
            self._graphs = StepGraphs(self.device)
        self._lr_tensor = torch.full((), t.lr, dtype=torch.float32, device=self.device)
        self._lr_host = t.lr
        self._n_active = torch.full((), t.initial_rays, dtype=torch.int64, device=self.device)
        self._rays_wanted = self._n_active.clone()
        self._rays_host: torch.Tensor | None = None
        self._pending_rays = None
        self._stat_loss = torch.zeros((), dtype=torch.float32, device=self.device)
        self._stat_samples = torch.zeros((), dtype=torch.int64, device=self.device)
        self._stat_hard = torch.zeros((), dtype=torch.float32, device=self.device)

        self.step = 0
        self.clock = 0.0
        self.n_rays = t.initial_rays
        self.history: list[EvalResult] = []
        self.next_checkpoint = t.checkpoint_every
        self.total_samples = torch.zeros((), dtype=torch.float64, device=self.device)
        self.peak_train_bytes = 0
        self.setup_bytes = 0
        self._stop_signal: int | None = None
        # Benchmarks replace this with a recorder of CUDA events between named stages.
        self.stage_marker: Callable[[str], None] = _no_mark

        if self.train_data is not None and config.data.images_on_host:
            self._images = None  # pixels are gathered on the host each step
            self._host_pixels = HostPixels(self.train_data.images, self.device, t.seed)
            self.train_data.images = self._host_pixels.images  # the pinned copy only
            self.notes += [self._host_pixels.note] if self._host_pixels.note else []
        elif self.train_data is not None:
            self._images = self.train_data.images.to(self.device)  # [N, H, W, 4] uint8
        if self.train_data is not None:
            self._c2w = self.train_data.c2w_unit().to(self.device)  # [N, 4, 4]
            self._mark_visible_cells()

    # ------------------------------------------------------------------ setup
    def _resolve_scene_box(self, config: RunConfig) -> RunConfig:
        """Fill in the scene's box, cascades and cone angle (instant-ngp's choices unless the
        config sets them); config.json records the values used.

        aabb_scale: the config's, else the training data's (transforms.json), else 1 (a run
        loaded without data whose config predates the field: it modelled the unit cube), capped
        at 128 as instant-ngp does."""
        d, t, o = config.data, config.train, config.occupancy
        aabb_scale = d.aabb_scale
        if aabb_scale is None:
            aabb_scale = float(self.train_data.aabb_scale) if self.train_data is not None else 1.0
        aabb_scale = min(float(aabb_scale), float(2 ** (MAX_CASCADES - 1)))
        cascades = o.cascades if o.cascades is not None else cascades_for_aabb_scale(aabb_scale)
        cone = t.cone_angle if t.cone_angle is not None else default_cone_angle(aabb_scale)
        if (self.train_data is not None and d.aabb_scale is None
                and self.train_data.aabb_scale > 1):
            self.notes.append(
                f"aabb_scale {aabb_scale:g}: {cascades} occupancy cascades, exponential "
                f"stepping with cone angle {cone:g}")
        return dataclasses.replace(
            config, data=dataclasses.replace(d, aabb_scale=aabb_scale),
            occupancy=dataclasses.replace(o, cascades=cascades),
            train=dataclasses.replace(t, cone_angle=float(cone)))

    def _mark_visible_cells(self) -> None:
        d = self.train_data
        centers = self.occupancy.cell_centers().to(self.device)
        visible = camera_frustum_mask(centers, self._c2w, d.fx, d.fy, d.cx, d.cy, d.width,
                                      d.height)
        self.occupancy.set_visible(visible)

    def _load(self, split: str) -> SceneData:
        d = self.config.data
        return load_capture(self.data_root, split, d.downscale, holdout_every=d.holdout_every,
                            skip_missing=d.skip_missing, min_sharpness=d.min_sharpness)

    @property
    def eval_data(self) -> SceneData:
        if self._eval_data is None:
            self._eval_data = self._load(self.config.data.eval_split)
        return self._eval_data

    def _rays(self, data: SceneData, c2w: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
              cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through pixel positions: per-image intrinsics and lens distortion where the
        data has them (captures), else the single pinhole camera (NeRF-synthetic)."""
        if data.intrinsics is None:
            return pixel_rays(c2w, data.fx, data.fy, data.cx, data.cy, px, py, cam)
        # The device copies are made once per scene: a host-to-device copy inside a step
        # would also stop the step from being captured as a CUDA graph.
        cached = self._camera_cache.get(id(data))
        if cached is None or cached[0] is not data:
            intrinsics = data.intrinsics.to(c2w.device)
            distortion = None if data.distortion is None else data.distortion.to(c2w.device)
            cached = (data, intrinsics, distortion)
            self._camera_cache[id(data)] = cached
        _, intrinsics, distortion = cached
        return camera_rays(c2w, intrinsics, distortion, data.camera_model, px, py, cam)

    # ------------------------------------------------------------------ one step
    def _lr_factor(self) -> float:
        t = self.config.train
        frac = (self.clock / t.max_seconds) if t.max_seconds else (self.step / t.max_steps)
        passed = sum(1 for m in t.lr_milestones if frac >= m)
        return t.lr_gamma**passed

    def _draw_rays(self, n_rays: int, gen: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        d, dev = self.train_data, self.device
        if self._host_pixels is not None:  # --images-on-host: indices from a CPU generator
            cam, col, row, pixels = self._host_pixels.draw(n_rays, self.step)
        else:
            cam = torch.randint(0, d.images.shape[0], (n_rays,), generator=gen, device=dev)
            col = torch.randint(0, d.width, (n_rays,), generator=gen, device=dev)
            row = torch.randint(0, d.height, (n_rays,), generator=gen, device=dev)
            pixels = self._images[cam, row, col]  # [R, 4] uint8
        if self.config.train.subpixel:
            sub = torch.rand(n_rays, 2, generator=gen, device=dev)
            px, py = col.float() + sub[:, 0], row.float() + sub[:, 1]
        else:
            px, py = col.float() + 0.5, row.float() + 0.5
        origins, directions = self._rays(d, self._c2w, px, py, cam)
        rgba = pixels.float() / 255.0  # [R, 4]
        background = torch.rand(n_rays, 3, generator=gen, device=dev)
        alpha = rgba[:, 3:4]
        target = rgba[:, :3] * alpha + background * (1.0 - alpha)  # [R, 3]
        jitter = torch.rand(n_rays, generator=gen, device=dev)
        return origins, directions, background, target, jitter

    def _march(self, origins, directions, jitter, n_active=None) -> PackedSamples:
        t = self.config.train
        return march_rays(origins, directions, self.occupancy.bitfield, step_size=t.step_size,
                          max_steps=t.max_steps_per_ray, capacity=t.target_samples,
                          jitter=jitter, backend=self.backend, n_active=n_active,
                          aabb_scale=self.aabb_scale, cone_angle=t.cone_angle)

    def _autocast(self, cache: bool = True):
        if self.use_amp:
            # No weight-cast cache while a CUDA graph is captured: the cache would outlive it.
            return torch.autocast("cuda", dtype=torch.float16, cache_enabled=cache)
        return contextlib.nullcontext()

    def uses_cuda_graphs(self) -> bool:
        """Whether steps are replayed as CUDA graphs (CUDA, triton backend, not disabled)."""
        return self._graphs is not None and self._graphs.enabled

    def graph_stats(self) -> dict | None:
        """:meth:`nerfmine.graphs.StepGraphs.stats` of this run (None: graphs never apply)."""
        return self._graphs.stats() if self._graphs is not None else None

    def _ray_slots(self) -> int:
        """Ray slots of a graph step: the next power of two above the wanted ray count, so
        that few graphs are captured; the step marches only the first ``_n_active`` slots."""
        t = self.config.train
        slots = 1 << max(0, int(self.n_rays - 1).bit_length())
        return int(min(max(slots, t.ray_granularity), max(t.max_rays, t.ray_granularity)))

    def train_step(self) -> StepStats:
        """One optimisation step; returns device tensors (no host synchronisation needed).

        On CUDA with the triton backend the device work is replayed as a captured CUDA graph
        (:mod:`nerfmine.graphs`); elsewhere it runs eagerly with host-sized ray counts.
        """
        mark = self.stage_marker
        mark("start")
        graphs = self.uses_cuda_graphs()
        # With graphs, on the graphs' stream (a no-op inside train(), which is already on it):
        # the occupancy update's matrix products then share the graphs' cuBLAS workspace.
        with self._graphs.on_stream() if graphs else contextlib.nullcontext():
            stats = self._step_body(mark, graphs)
        self.step += 1
        mark("ema_bookkeeping")
        return stats

    def _step_body(self, mark: Callable[[str], None], graphs: bool) -> StepStats:
        if self.occupancy.should_update(self.step):
            self.occupancy.update(self.step, self.field.density, self.generator)
        mark("occupancy")
        lr = self.config.train.lr * self._lr_factor()
        if graphs:
            return self._graph_step(lr)
        loss, samples, hard_fraction = self._device_step(
            self.n_rays, None, None, lr, self.generator, mark, capturing=False)
        self._adapt_ray_count(samples)
        self.total_samples += samples.n_samples
        return StepStats(loss=loss.detach(), n_samples=samples.n_samples,
                         hard_fraction=hard_fraction)

    def _graph_step(self, lr: float) -> StepStats:
        """The device work as a CUDA graph keyed by (ray slots, mining buffer size)."""
        t = self.config.train
        if lr != self._lr_host:
            self._lr_tensor.fill_(lr)
            self._lr_host = lr
        slots = self._ray_slots()
        size = None
        if self.config.mining != "none":
            quantum = max(BUFFER_MULTIPLE, t.target_samples // GRAPH_BUFFER_BUCKETS)
            size = self.miner.buffer_size(t.target_samples, multiple=quantum)

        def body(capturing: bool) -> None:
            loss, samples, hard_fraction = self._device_step(
                slots, self._n_active, size, self._lr_tensor, None, _no_mark, capturing)
            self._device_ray_count(samples, slots)
            self.total_samples += samples.n_samples
            self._stat_loss.copy_(loss.detach())
            self._stat_samples.copy_(samples.n_samples)
            if hard_fraction is not None:
                self._stat_hard.copy_(hard_fraction)

        self._graphs.run((slots, size), body)
        if self.config.mining != "none":
            self.miner.issue_host_copy()
        self._poll_rays_wanted()
        return StepStats(loss=self._stat_loss, n_samples=self._stat_samples,
                         hard_fraction=self._stat_hard if self.config.mining != "none" else None)

    def _device_step(self, n_rays: int, n_active: torch.Tensor | None, size: int | None,
                     lr: float | torch.Tensor, gen: torch.Generator | None,
                     mark: Callable[[str], None], capturing: bool):
        """Rays, marching, loss (with or without mining), backward, Adam, EMA: device work
        only. Returns (loss [], samples, hard fraction [] or None)."""
        t, cfg = self.config.train, self.config
        origins, directions, background, target, jitter = self._draw_rays(n_rays, gen)
        samples = self._march(origins, directions, jitter, n_active)
        mark("rays_march")
        n_valid = samples.ray_valid.sum().clamp(min=1)  # [] device
        self.optimizer.zero_grad(set_to_none=True)
        self._table_grad.zero_()
        skip = None
        hard_fraction = None
        cache = not capturing
        if cfg.mining == "none":
            with self._autocast(cache):
                raw = self.field(samples.positions, samples.directions)  # [C, 4]
            rgb, _, _ = composite(raw, samples, background, backend=self.backend,
                                  min_transmittance=t.min_transmittance)
            per_ray = ((rgb - target) ** 2).mean(-1) * samples.ray_valid
            loss = per_ray.sum() / n_valid
            self.scaler.scale_tensor(loss).backward()
            mark("forward_backward")
        else:
            raw_all = self._first_forward(samples, cache)  # [C, 4], no graph
            mark("first_forward")
            loss_per_ray, grad_raw = composite_output_grads(
                raw_all, samples, background, target, backend=self.backend,
                min_transmittance=t.min_transmittance)
            loss = loss_per_ray.sum() / n_valid
            mined = self.miner.mine(grad_raw, samples.n_samples, t.target_samples, gen,
                                    size=size, host_copy=size is None, backend=self.backend)
            idx = mined.indices  # [S]: the drawn samples (ascending), then padding
            mark("mining")
            injected = mined.injected_grads(grad_raw, 1.0 / n_valid)  # [b_cap, 4], 0 off-mask
            injected = self.scaler.scale_tensor(injected)
            # The injected gradients are fixed by the first pass, so the second pass runs in
            # chunks, each forward followed by its own backward: only one chunk's graph is
            # alive at a time, and the gradients add up in place.
            chunk = t.second_pass_chunk
            for lo in range(0, idx.shape[0], chunk):
                part = idx[lo:lo + chunk]
                with self._autocast(cache):
                    raw_hard = self.field(samples.positions[part], samples.directions[part])
                raw_hard.backward(gradient=injected[lo:lo + chunk])  # [chunk, 4]
            mark("forward_backward")
            skip = mined.b == 0
            hard_fraction = mined.b.float() / samples.n_samples.clamp(min=1).float()

        self.field.table.grad = self._table_grad
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        found_inf = self.scaler.unscale_(list(self.field.parameters()))
        if found_inf is not None:
            skip = found_inf if skip is None else (skip | found_inf)
        self.optimizer.step(skip=skip)
        self.scaler.update(found_inf)
        mark("optimizer")
        self._update_ema()
        return loss, samples, hard_fraction

    @torch.no_grad()
    def _first_forward(self, samples: PackedSamples, cache: bool = True) -> torch.Tensor:
        """Mining's inference pass over every slot, in chunks (bounded transient memory)."""
        chunk = self.config.train.first_pass_chunk
        capacity = samples.capacity
        with self._autocast(cache):
            if capacity <= chunk:
                return self.field(samples.positions, samples.directions)
            raw = torch.empty(capacity, 4, device=self.device, dtype=torch.float32)
            for lo in range(0, capacity, chunk):
                hi = min(capacity, lo + chunk)
                raw[lo:hi] = self.field(samples.positions[lo:hi], samples.directions[lo:hi])
            return raw

    @torch.no_grad()
    def _update_ema(self) -> None:
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.field.parameters()],
                             1.0 - self.config.train.ema_decay)

    def _adapt_ray_count(self, samples: PackedSamples) -> None:
        """instant-ngp's rule rays *= target / measured, written as rays = target / (samples
        per ray), rounded to the granularity.

        Samples per ray are measured over the kept rays (dropped rays have no samples). On CUDA
        the figure reaches the host through a non-blocking copy read one or more steps later, so
        the step needs no synchronisation; since it does not depend on the ray count of the
        step it came from, the lag cannot make the controller oscillate.
        """
        kept = samples.ray_valid.sum()
        measured = samples.n_samples.double() / kept.clamp(min=1).double()  # samples per ray
        if self.device.type == "cuda":
            pending = getattr(self, "_pending_measured", None)
            if pending is not None and pending[1].query():
                self._set_rays(float(pending[0]))
                pending = None
            if pending is None:
                buf = torch.empty((), dtype=torch.float64, pin_memory=True)
                buf.copy_(measured, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._pending_measured = (buf, event)
            else:
                self._pending_measured = pending
        else:
            self._set_rays(float(measured))

    @torch.no_grad()
    def _device_ray_count(self, samples: PackedSamples, slots: int) -> None:
        """The ray-count rule of :meth:`_adapt_ray_count` on the device, for graph steps: the
        next step marches ``min(wanted, slots)`` rays; the host reads ``wanted`` (lagged) to
        pick the number of slots."""
        t = self.config.train
        kept = samples.ray_valid.sum()
        measured = samples.n_samples.double() / kept.clamp(min=1).double()  # samples per ray
        rays = t.target_samples / measured.clamp(min=1.0 / t.max_rays)
        rays = torch.where(samples.n_samples > 0, rays, torch.full_like(rays, t.max_rays))
        rays = torch.ceil(rays / t.ray_granularity) * t.ray_granularity
        rays = rays.clamp(min=t.ray_granularity, max=t.max_rays).to(torch.int64)
        self._rays_wanted.copy_(rays)
        self._n_active.copy_(rays.clamp(max=slots))

    def _poll_rays_wanted(self) -> None:
        """Pick up the lagged host copy of the wanted ray count; start the next copy."""
        if self.device.type != "cuda":  # a plain memory read, no device involved
            self.n_rays = int(self._rays_wanted)
            return
        pending = self._pending_rays
        if pending is not None:
            if not pending[1].query():
                return
            self.n_rays = int(pending[0])
        buf = self._rays_host if self._rays_host is not None else torch.empty(
            (), dtype=torch.int64, pin_memory=True)
        self._rays_host = buf
        buf.copy_(self._rays_wanted, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending_rays = (buf, event)

    def _set_rays(self, samples_per_ray: float) -> None:
        t = self.config.train
        if not math.isfinite(samples_per_ray) or samples_per_ray <= 0:
            samples_per_ray = 1.0 / t.max_rays  # every ray empty: as many rays as allowed
        rays = t.target_samples / samples_per_ray
        rays = int(math.ceil(rays / t.ray_granularity)) * t.ray_granularity
        self.n_rays = int(min(max(rays, t.ray_granularity), t.max_rays))

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily load the EMA weights into the field."""
        params = list(self.field.parameters())
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, self.ema):
                p.copy_(e)
            self.field.sync_table_fp16()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
                self.field.sync_table_fp16()

    def render_settings(self) -> RenderSettings:
        t = self.config.train
        return RenderSettings(step_size=t.step_size, max_steps=t.max_steps_per_ray,
                              min_transmittance=t.min_transmittance,
                              rays_per_chunk=t.eval_rays_per_chunk, backend=self.backend,
                              aabb_scale=self.aabb_scale, cone_angle=t.cone_angle)

    @torch.no_grad()
    def evaluate(self, save_dir: Path | None = None) -> EvalResult:
        """PSNR and SSIM of the EMA weights on the evaluation split, over a white background."""
        data = self.eval_data
        count = data.images.shape[0]
        if self.config.train.eval_max_images:
            count = min(count, self.config.train.eval_max_images)
        c2w = data.c2w_unit().to(self.device)
        settings = self.render_settings()
        per_image = []
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        with self.ema_weights():
            for i in range(count):
                out = self._render_view(data, c2w, i, settings)
                rgba = data.images[i].to(self.device).float() / 255.0
                gt = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
                pred = out["rgb"].clamp(0, 1)
                name = data.image_paths[i].stem
                per_image.append({"name": name, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)})
                if save_dir is not None:
                    _save_png(save_dir / f"{name}.png", pred)
        return EvalResult(
            clock=self.clock, step=self.step,
            psnr=float(np.mean([r["psnr"] for r in per_image])),
            ssim=float(np.mean([r["ssim"] for r in per_image])),
            per_image=per_image,
            mean_hard_fraction=self.mean_hard_fraction(),
        )

    def _render_view(self, data: SceneData, c2w: torch.Tensor, index: int,
                     settings: RenderSettings) -> dict[str, torch.Tensor]:
        if data.intrinsics is None:
            return render_image(self.field, self.occupancy.bitfield, c2w[index], data.fx,
                                data.fy, data.cx, data.cy, data.width, data.height, WHITE,
                                settings)
        height, width = data.height, data.width
        rows, cols = torch.meshgrid(torch.arange(height, device=self.device),
                                    torch.arange(width, device=self.device), indexing="ij")
        px, py = cols.reshape(-1).float() + 0.5, rows.reshape(-1).float() + 0.5
        cam = torch.full_like(rows.reshape(-1), index)
        origins, directions = self._rays(data, c2w, px, py, cam)
        background = torch.ones_like(origins)
        rgb, opacity, depth = render_rays(self.field, self.occupancy.bitfield, origins,
                                          directions, background, settings)
        return {"rgb": rgb.view(height, width, 3), "opacity": opacity.view(height, width),
                "depth": depth.view(height, width)}

    def mean_hard_fraction(self) -> float | None:
        return self.miner.mean_fraction() if self.config.mining == "hsm" else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "field": self.field.state_dict(),
            "ema": [e.clone() for e in self.ema],
            "optimizer": self.optimizer.state_dict(),
            "occupancy": self.occupancy.state_dict(),
            "miner": self.miner.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "clock": self.clock,
            "n_rays": self.n_rays,
            "next_checkpoint": self.next_checkpoint,
            "total_samples": self.total_samples.clone(),
            "peak_train_bytes": self.peak_train_bytes,
            "history": [vars(h) for h in self.history],
            "rng": {"generator": self.generator.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": (torch.cuda.get_rng_state(self.device)
                             if self.device.type == "cuda" else None)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.field.load_state_dict(state["field"])
            for e, s in zip(self.ema, state["ema"], strict=True):
                e.copy_(s)
            self.optimizer.load_state_dict(state["optimizer"])
            self.occupancy.load_state_dict(state["occupancy"])
            self.miner.load_state_dict(state["miner"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the checkpoint does not fit this config's model ({exc})") from None
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.clock = float(state["clock"])
        self.n_rays = int(state["n_rays"])
        self.next_checkpoint = float(state["next_checkpoint"])
        self.total_samples = state["total_samples"].to(self.device)
        self.peak_train_bytes = int(state["peak_train_bytes"])
        self.history = [EvalResult(**h) for h in state["history"]]
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        cuda_rng = state["rng"].get("cuda")
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self._n_active.fill_(self.n_rays)
        self._rays_wanted.fill_(self.n_rays)

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.state_dict())
        return path

    @classmethod
    def from_run_dir(cls, run_dir: Path, values_update=None, load_train: bool = False) -> Trainer:
        """Load a run's last checkpoint for rendering or evaluation (no training data needed).

        ``values_update(values)`` may edit the saved config dict first. A run trained on a GPU
        loads on a machine without one, on the CPU with the torch backend.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        values = state["config"]
        if values.get("device", "cpu").startswith("cuda") and not torch.cuda.is_available():
            values["device"], values["backend"] = "cpu", "torch"
        if values_update is not None:
            values_update(values)
        trainer = cls(config_from_dict(values), run_dir, load_train=load_train)
        trainer.load_state_dict(state)
        return trainer

    @classmethod
    def resume(cls, run_dir: Path, overrides: dict[str, Any] | None = None) -> Trainer:
        """Rebuild a trainer from ``run_dir``; ``overrides`` may change the budget and
        evaluation points, anything else must match the checkpoint's config."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        if state["config"].get("data", {}).get("aabb_scale") is None:
            # Written before cascades: such a run modelled the unit cube whatever the data said.
            state["config"].setdefault("data", {})["aabb_scale"] = 1.0
        # Written before train.subpixel existed: such a run drew random points of its pixels.
        state["config"].setdefault("train", {}).setdefault("subpixel", True)
        saved = config_from_dict(state["config"])
        config = saved
        if overrides:
            merged = saved.to_dict()
            for section, values in overrides.items():
                if isinstance(values, dict):
                    merged[section].update(values)
                else:
                    merged[section] = values
            config = config_from_dict(merged)
            check_resume_compatible(saved, config)
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{run_dir} was trained on CUDA; this machine has no CUDA GPU")
        trainer = cls(config, run_dir)
        trainer.load_state_dict(state)
        trainer.config.save(run_dir / "config.json")
        return trainer

    # ------------------------------------------------------------------ the loop
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _budget_fraction(self, clock: float) -> float:
        t = self.config.train
        return clock / t.max_seconds if t.max_seconds else self.step / t.max_steps

    def _pending_eval_points(self) -> list[float]:
        t = self.config.train
        done = {round(h.clock if t.max_seconds else h.step, 6) for h in self.history}
        points = sorted(set(t.eval_at))
        now = self.clock if t.max_seconds else self.step
        return [p for p in points if p > now and round(p, 6) not in done]

    def _install_signal_handlers(self):
        previous = {}

        def handler(signum, frame):  # noqa: ARG001
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to the budget, evaluating at the configured points; returns metrics.json's dict.

        ``progress`` is called about twice a second with a dict of display values.
        """
        t = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(self.run_dir / "config.json")
        if self.device.type == "cuda":
            self._sync()
            self.setup_bytes = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        eval_points = self._pending_eval_points()
        unit_is_seconds = t.max_seconds is not None
        budget = t.max_seconds if unit_is_seconds else t.max_steps
        previous_handlers = self._install_signal_handlers()
        last_display = 0.0
        stats: StepStats | None = None
        # With CUDA graphs the whole loop (replays, occupancy updates, evaluations) runs on
        # the graphs' stream, so that one cuBLAS workspace serves it (StepGraphs.on_stream).
        loop_stream = (self._graphs.on_stream() if self.uses_cuda_graphs()
                       else contextlib.nullcontext())
        with loop_stream:
            try:
                segment_start = time.perf_counter()
                clock_at_segment = self.clock
                while True:
                    now_clock = clock_at_segment + (time.perf_counter() - segment_start)
                    now = now_clock if unit_is_seconds else self.step
                    if now >= budget:
                        break
                    due_eval = bool(eval_points) and now >= eval_points[0]
                    due_ckpt = now_clock >= self.next_checkpoint
                    if due_eval or due_ckpt or self._stop_signal is not None:
                        self._sync()
                        self.clock = clock_at_segment + (time.perf_counter() - segment_start)
                        self._pause_memory()
                        if due_eval:
                            while eval_points and now >= eval_points[0]:
                                eval_points.pop(0)
                            self._evaluate_and_record(progress)
                        self.next_checkpoint = self.clock + t.checkpoint_every
                        self.save()
                        if self._stop_signal is not None:
                            raise TrainingInterrupted(
                                f"training interrupted at step {self.step}; the checkpoint is in "
                                f"{self.run_dir}. Continue with: "
                                f"nerfmine train --resume {self.run_dir}")
                        self._resume_memory()
                        segment_start = time.perf_counter()
                        clock_at_segment = self.clock
                    self.clock = now_clock  # the learning-rate schedule reads it
                    stats = self.train_step()
                    wall = time.perf_counter()
                    if progress is not None and wall - last_display > 0.5:
                        last_display = wall
                        self.clock = clock_at_segment + (wall - segment_start)
                        progress(self._display(stats))
                self._sync()
                self.clock = clock_at_segment + (time.perf_counter() - segment_start)
            finally:
                for sig, old in previous_handlers.items():
                    signal.signal(sig, old)
            self._pause_memory()
            final = self._evaluate_and_record(progress, final=True)
            self.save()
        metrics = self.write_metrics(final)
        if progress is not None and stats is not None:
            progress(self._display(stats) | {"done": True})
        return metrics

    def _display(self, stats: StepStats) -> dict[str, Any]:
        t = self.config.train
        info = {
            "step": self.step,
            "clock": self.clock,
            "loss": float(stats.loss),
            "samples_per_second": float(self.total_samples) / max(self.clock, 1e-9),
            "psnr": self.history[-1].psnr if self.history else None,
            "fraction": self._budget_fraction(self.clock),
            "rays": self.n_rays,
        }
        if t.max_seconds:
            info["time_left"] = max(0.0, t.max_seconds - self.clock)
        else:
            rate = self.step / max(self.clock, 1e-9)
            info["time_left"] = max(0, t.max_steps - self.step) / max(rate, 1e-9)
        if stats.hard_fraction is not None:
            info["hard_fraction"] = self.miner.mean_fraction()
        return info

    def _pause_memory(self) -> None:
        if self.device.type == "cuda":
            self.peak_train_bytes = max(self.peak_train_bytes,
                                        torch.cuda.max_memory_allocated(self.device))

    def _resume_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _evaluate_and_record(self, progress=None, final: bool = False) -> EvalResult:
        t = self.config.train
        if (not final and self.history and self.history[-1].step == self.step):
            return self.history[-1]
        if final and self.history and self.history[-1].step == self.step and not t.save_renders:
            return self.history[-1]
        save_dir = self.run_dir / "renders" / self.config.data.eval_split if (
            final and t.save_renders) else None
        result = self.evaluate(save_dir=save_dir)
        if self.history and self.history[-1].step == self.step:
            self.history[-1] = result
        else:
            self.history.append(result)
        if progress is not None:
            progress({"event": "eval", "clock": result.clock, "step": result.step,
                      "psnr": result.psnr, "ssim": result.ssim})
        self._plot()
        return result

    def _plot(self) -> None:
        from nerfmine.plots import plot_psnr_curve

        try:
            plot_psnr_curve([h.summary() for h in self.history], self.run_dir / "psnr_curve.png",
                            title=f"{self.config.mining} / {self.backend}")
        except Exception as exc:  # noqa: BLE001 - a plot must never lose a run
            (self.run_dir / "plot_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")

    def write_metrics(self, final: EvalResult) -> dict[str, Any]:
        t = self.config.train
        memory = None
        if self.device.type == "cuda":
            memory = {
                "total_peak_bytes": self.peak_train_bytes,
                "after_setup_bytes": self.setup_bytes,
                "training_increment_bytes": self.peak_train_bytes - self.setup_bytes,
            }
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
            "samples_per_second": float(self.total_samples) / max(self.clock, 1e-9),
            "steps_per_second": self.step / max(self.clock, 1e-9),
            "peak_gpu_memory": memory if memory else "not measured (not a CUDA run)",
            "mean_hard_fraction": self.mean_hard_fraction(),
            "psnr": final.psnr,
            "ssim": final.ssim,
            "ssim_implementation": "nerfmine.metrics.ssim (Gaussian 11x11, sigma 1.5, valid)",
            "lpips": LPIPS_NOT_MEASURED,
            "per_image": final.per_image,
            "curve": [h.summary() for h in self.history],
            "budget": {"max_steps": t.max_steps, "max_seconds": t.max_seconds},
        }
        tmp = self.run_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        tmp.replace(self.run_dir / "metrics.json")
        return metrics


def _no_mark(name: str) -> None:
    return None


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    array = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(path)
