"""One training step of Instant-NGP, with or without online hard sample mining.

:class:`TrainStep` owns everything a step updates besides the scene's weights: the optimizer
and its loss scaler, the miner, the ray count, the table's gradient buffer, the random
generator and, on a GPU, the captured CUDA graphs. A step (see docs/design.md for the tensors):

1. the occupancy-grid update on its schedule (chunked, never the memory peak; on a GPU with
   graphs, captured once as a graph of its own and replayed, since its few hundred small
   kernels cost more to launch from Python than to run);
2. rays through random training pixels, each over a random background colour
   (:class:`~nerfmine.data.rays.RaySampler`);
3. marching into a packed buffer of fixed capacity (device-side counts);
4. baseline: forward with a graph on every sample, composite, mean per-ray L2, backward.
   Mining: forward without a graph on every sample, closed-form output gradients, the miner's
   draw of b samples, forward with a graph on those only, backward injecting their gradients;
5. Adam (sparse on the table, L2 on the MLPs), the EMA of the weights, the ray-count rule.

Steps 2 to 5 are device work only (no host synchronisation). On CUDA with the triton backend
they are captured once per shape as a CUDA graph and replayed (:mod:`nerfmine.graphs`);
elsewhere they run eagerly, which is the graph path with as many ray slots as rays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nerfmine.config import RunConfig
from nerfmine.data.rays import RaySampler
from nerfmine.distributed import StepExchange
from nerfmine.errors import ConfigError
from nerfmine.graphs import StepGraphs
from nerfmine.miner import BUFFER_MULTIPLE, HardSampleMiner
from nerfmine.ops.composite import composite, composite_output_grads
from nerfmine.ops.march import march_rays
from nerfmine.ops.packed import PackedSamples
from nerfmine.optim import DeviceLossScaler, NGPAdam
from nerfmine.ray_count import RayCount
from nerfmine.scene import TrainedScene

# A graph step rounds the mining buffer up to target_samples / this: few graphs, little slack.
GRAPH_BUFFER_BUCKETS = 64


@dataclass
class StepStats:
    """Device tensors of the last step (read them on the host only for display)."""

    loss: torch.Tensor
    n_samples: torch.Tensor
    hard_fraction: torch.Tensor | None = None


def no_mark(name: str) -> None:
    """The default stage marker: does nothing (benchmarks record CUDA events instead)."""
    return None


class TrainStep:
    """The device work of a training step of ``scene`` on rays from ``rays``.

    Calling it, ``step_fn(index, lr)``, runs one step (``index`` is the number of steps done,
    which the occupancy schedule reads; ``lr`` the learning rate from the schedule) and returns
    device statistics. ``stage_marker`` is called with a stage name at each stage boundary of an
    eager step (benchmarks record CUDA events there; graph replays have no stages).
    """

    def __init__(self, config: RunConfig, scene: TrainedScene, rays: RaySampler,
                 generator: torch.Generator):
        if scene.ema is None:
            raise ValueError("TrainStep needs a scene that keeps its EMA weights apart")
        self.config = config
        self.scene = scene
        self.rays = rays
        self.generator = generator
        self.device = torch.device(config.device)
        self.backend = config.backend
        t, o = config.train, config.optim
        field = scene.field
        self.miner = HardSampleMiner(config.miner).to(self.device)
        self.optimizer = NGPAdam([field.table], field.mlp_parameters(), lr=o.lr, betas=o.betas,
                                 eps=o.eps, l2_reg=o.l2_reg, backend=self.backend)
        self.optimizer.init_state()  # the moments count as setup memory, not training memory
        if field.table_fp16 is not None:
            # The fp16 lookup copy of the table is written by each Adam step (setup memory).
            self.optimizer.set_fp16_copy(field.table, field.table_fp16)
        # The table's gradient lives in one preallocated buffer (setup memory, like the
        # moments): every backward of a step adds into it (see NGPField.table_grad_sink).
        self.table_grad = torch.zeros_like(field.table)
        field.table_grad_sink = self.table_grad
        self.use_amp = bool(t.mixed_precision and self.device.type == "cuda")
        self.scaler = DeviceLossScaler(self.device, enabled=self.use_amp)
        self.ray_count = RayCount(t.target_samples, t.ray_granularity, t.max_rays,
                                  t.initial_rays, self.device)
        # CUDA-graph steps draw their random numbers from the default CUDA generator (seeded
        # with the run's seed and checkpointed with it); pixels gathered on the host
        # (--images-on-host) cannot be replayed, so those runs step eagerly.
        self.graphs: StepGraphs | None = None
        if (t.cuda_graphs and self.device.type == "cuda" and self.backend == "triton"
                and not rays.on_host):
            self.graphs = StepGraphs(self.device)
        self.lr_tensor = torch.full((), o.lr, dtype=torch.float32, device=self.device)
        self._lr_host = o.lr
        self._stat_loss = torch.zeros((), dtype=torch.float32, device=self.device)
        self._stat_samples = torch.zeros((), dtype=torch.int64, device=self.device)
        self._stat_hard = torch.zeros((), dtype=torch.float32, device=self.device)
        self.total_samples = torch.zeros((), dtype=torch.float64, device=self.device)
        # Steps skipped for a NaN or inf gradient (fp16 overflows included): in all, and in a
        # row up to the last step (the trainer stops a run whose streak grows too long).
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.nonfinite_streak = torch.zeros((), dtype=torch.int64, device=self.device)
        self.stage_marker: Callable[[str], None] = no_mark
        # Data-parallel steps (nerfmine.distributed): the exchange between ranks, and the
        # generator of the occupancy updates, which must draw alike on every rank (the rays'
        # generator must not). One process: no exchange, and the one generator for both.
        self.exchange: StepExchange | None = None
        self.occupancy_generator: torch.Generator = generator

    # ------------------------------------------------------------------ graphs
    def uses_cuda_graphs(self) -> bool:
        """Whether steps are replayed as CUDA graphs (CUDA, triton backend, not disabled)."""
        return self.graphs is not None and self.graphs.enabled

    def graph_stats(self) -> dict | None:
        """:meth:`nerfmine.graphs.StepGraphs.stats` (None: graphs never apply to this run)."""
        return self.graphs.stats() if self.graphs is not None else None

    def disable_graphs(self, reason: str) -> None:
        """Launch every later step eagerly, saying why (e.g. to time its stages)."""
        if self.graphs is not None:
            self.graphs.disable(reason)

    def on_stream(self):
        """The stream the steps run on (the graphs'), as a context; a no-op without graphs.
        The trainer runs its whole loop there so that one cuBLAS workspace serves it."""
        return self.graphs.on_stream() if self.uses_cuda_graphs() else contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def __call__(self, index: int, lr: float) -> StepStats:
        """Step number ``index`` (0-based) at learning rate ``lr``; device statistics."""
        mark = self.stage_marker
        mark("start")
        graphs = self.uses_cuda_graphs()
        # With graphs, on the graphs' stream (a no-op inside the training loop, which is
        # already on it): the occupancy update's matrix products share its cuBLAS workspace.
        with self.on_stream():
            if self.scene.occupancy.should_update(index):
                self._update_occupancy(index, graphs)
            mark("occupancy")
            stats = self._graph_step(lr) if graphs else self._eager_step(lr, mark)
        mark("ema_bookkeeping")
        return stats

    def _update_occupancy(self, index: int, graphs: bool) -> None:
        """The occupancy update of step ``index``: eager, or replayed from the graph of its kind.

        An update re-evaluates every cell before ``warmup_steps`` and half of them after, so
        there are two graphs, keyed by that. Captured updates draw from the default CUDA
        generator (graph-safe, checkpointed); eager ones from ``occupancy_generator``, which
        data-parallel ranks seed alike (their steps are eager)."""
        occupancy, density = self.scene.occupancy, self.scene.field.density

        def update(generator: torch.Generator | None) -> None:
            # The density query in the training forward's precision (fp16 matrix products
            # under mixed precision): the grid then sees the density the step trains.
            with self._autocast(cache=False):
                occupancy.update(index, density, generator, backend=self.backend)

        if not graphs:
            update(self.occupancy_generator)
            return
        warm = index < occupancy.config.warmup_steps
        self.graphs.run(("occupancy", warm), lambda capturing: update(None))

    def _eager_step(self, lr: float, mark: Callable[[str], None]) -> StepStats:
        slots = self.ray_count.slots(bucketed=False)
        loss, samples, hard_fraction = self.device_step(slots, None, lr, self.generator, mark)
        self.ray_count.publish()
        return StepStats(loss=loss.detach(), n_samples=samples.n_samples,
                         hard_fraction=hard_fraction)

    def _graph_step(self, lr: float) -> StepStats:
        """The device work as a CUDA graph keyed by (ray slots, mining buffer size)."""
        t = self.config.train
        if lr != self._lr_host:
            self.lr_tensor.fill_(lr)
            self._lr_host = lr
        slots = self.ray_count.slots(bucketed=True)
        size = None
        if self.config.mining != "none":
            quantum = max(BUFFER_MULTIPLE, t.target_samples // GRAPH_BUFFER_BUCKETS)
            size = self.miner.buffer_size(t.target_samples, multiple=quantum)

        def body(capturing: bool) -> None:
            loss, samples, hard_fraction = self.device_step(
                slots, size, self.lr_tensor, None, no_mark, capturing)
            self._stat_loss.copy_(loss.detach())
            self._stat_samples.copy_(samples.n_samples)
            if hard_fraction is not None:
                self._stat_hard.copy_(hard_fraction)

        self.graphs.run((slots, size), body)
        if self.config.mining != "none":
            self.miner.issue_host_copy()
        self.ray_count.publish()
        return StepStats(loss=self._stat_loss, n_samples=self._stat_samples,
                         hard_fraction=self._stat_hard if self.config.mining != "none" else None)

    def _autocast(self, cache: bool = True):
        if self.use_amp:
            # No weight-cast cache while a CUDA graph is captured: the cache would outlive it.
            return torch.autocast("cuda", dtype=torch.float16, cache_enabled=cache)
        return contextlib.nullcontext()

    def march(self, origins: torch.Tensor, directions: torch.Tensor, jitter: torch.Tensor,
              n_active: torch.Tensor | None = None) -> PackedSamples:
        """March a step's rays into the packed buffers of ``train.target_samples`` slots."""
        m = self.config.march
        return march_rays(origins, directions, self.scene.occupancy.bitfield,
                          step_size=m.step_size, max_steps=m.max_steps_per_ray,
                          capacity=self.config.train.target_samples, jitter=jitter,
                          backend=self.backend, n_active=n_active,
                          aabb_scale=self.scene.aabb_scale, cone_angle=m.cone_angle)

    def device_step(self, slots: int, size: int | None, lr: float | torch.Tensor,
                    gen: torch.Generator | None, mark: Callable[[str], None] = no_mark,
                    capturing: bool = False):
        """Rays, marching, loss (with or without mining), backward, Adam, EMA and the ray count
        rule: device work only. ``slots`` rays are drawn and the first ``min(wanted, slots)``
        marched; ``size`` is the mining buffer (None: the miner's own choice). Returns (loss [],
        samples, hard fraction [] or None)."""
        t, cfg = self.config.train, self.config
        field = self.scene.field
        n_active = self.ray_count.active(slots)  # [] device
        batch = self.rays.draw(slots, gen, self.scene.step)
        samples = self.march(batch.origins, batch.directions, batch.jitter, n_active)
        mark("rays_march")
        n_valid = samples.ray_valid.sum()  # [] device
        if self.exchange is not None:  # every rank divides by the union's count
            self.exchange.sum_([n_valid])
        n_valid = n_valid.clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        self.table_grad.zero_()
        skip = None
        hard_fraction = None
        cache = not capturing
        min_transmittance = cfg.march.min_transmittance
        if cfg.mining == "none":
            with self._autocast(cache):
                raw = field(samples.positions, samples.directions)  # [C, 4]
            rgb, _, _ = composite(raw, samples, batch.background, backend=self.backend,
                                  min_transmittance=min_transmittance)
            per_ray = ((rgb - batch.target) ** 2).mean(-1) * samples.ray_valid
            loss = per_ray.sum() / n_valid
            self.scaler.scale_tensor(loss).backward()
            mark("forward_backward")
        else:
            raw_all = self._first_forward(samples, cache)  # [C, 4], no graph
            mark("first_forward")
            loss_per_ray, grad_raw = composite_output_grads(
                raw_all, samples, batch.background, batch.target, backend=self.backend,
                min_transmittance=min_transmittance)
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
                    raw_hard = field(samples.positions[part], samples.directions[part])
                raw_hard.backward(gradient=injected[lo:lo + chunk])  # [chunk, 4]
            mark("forward_backward")
            skip = mined.b == 0
            hard_fraction = mined.b.float() / samples.n_samples.clamp(min=1).float()

        if self.exchange is not None:
            loss = self._exchange_gradients(loss)
        field.table.grad = self.table_grad
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        found_inf = self.scaler.unscale_(list(field.parameters()))  # [] bool
        skip = found_inf if skip is None else (skip | found_inf)
        bad = found_inf.to(torch.int64)
        self.nonfinite_steps.add_(bad)
        self.nonfinite_streak.mul_(bad).add_(bad)  # +1 on a bad step, 0 on a good one
        self.optimizer.step(skip=skip)
        self.scaler.update(found_inf)
        mark("optimizer")
        self._update_ema()
        if self.exchange is not None and cfg.mining != "none":
            self.exchange.mean_(self.miner.tau_bar)
        self.ray_count.update(samples)
        self.total_samples += samples.n_samples
        return loss, samples, hard_fraction

    @torch.no_grad()
    def _exchange_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Sum the table's and the MLPs' gradients and the loss over the ranks (each rank's
        loss is its rays' share of the union's, so the sums are the union's); returns the
        union's loss."""
        mlp = self.scene.field.mlp_parameters()
        for p in mlp:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        loss = loss.detach().clone()
        self.exchange.sum_([self.table_grad, *(p.grad for p in mlp), loss])
        return loss

    @torch.no_grad()
    def _first_forward(self, samples: PackedSamples, cache: bool = True) -> torch.Tensor:
        """Mining's inference pass over every slot, in chunks (bounded transient memory)."""
        chunk = self.config.train.first_pass_chunk
        capacity = samples.capacity
        field = self.scene.field
        with self._autocast(cache):
            if capacity <= chunk:
                return field(samples.positions, samples.directions)
            raw = torch.empty(capacity, 4, device=self.device, dtype=torch.float32)
            for lo in range(0, capacity, chunk):
                hi = min(capacity, lo + chunk)
                raw[lo:hi] = field(samples.positions[lo:hi], samples.directions[lo:hi])
            return raw

    @torch.no_grad()
    def _update_ema(self) -> None:
        params = [p.detach() for p in self.scene.field.parameters()]
        torch._foreach_lerp_(self.scene.ema, params, 1.0 - self.config.optim.ema_decay)

    # ------------------------------------------------------------------ state
    def mean_hard_fraction(self) -> float | None:
        """Mean b/B of the run's mining steps (None for the baseline)."""
        return self.miner.mean_fraction() if self.config.mining == "hsm" else None

    def state_dict(self) -> dict[str, Any]:
        """The step's part of a checkpoint (optimizer, miner, loss scale, ray count, sample
        count, random generators)."""
        cuda = self.device.type == "cuda"
        return {
            "optimizer": self.optimizer.state_dict(),
            "miner": self.miner.state_dict(),
            "scaler": self.scaler.state_dict(),
            "n_rays": self.ray_count.n_rays,
            "total_samples": self.total_samples.clone(),
            "nonfinite": {"steps": self.nonfinite_steps.clone(),
                          "streak": self.nonfinite_streak.clone()},
            "rng": {"generator": self.generator.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if cuda else None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.miner.load_state_dict(state["miner"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the checkpoint does not fit this config's model ({exc})") from None
        self.scaler.load_state_dict(state["scaler"])
        self.ray_count.load(int(state["n_rays"]))
        self.total_samples = state["total_samples"].to(self.device)
        nonfinite = state.get("nonfinite")  # absent in checkpoints from before it was counted
        if nonfinite is not None:
            self.nonfinite_steps.copy_(nonfinite["steps"])
            self.nonfinite_streak.copy_(nonfinite["streak"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        cuda_rng = state["rng"].get("cuda")
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
