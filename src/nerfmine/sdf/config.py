"""Settings of an SDF fit: a frozen dataclass with instant-ngp's values as defaults, and presets.

Sources: instant-ngp's ``configs/sdf/base.json`` (loss, optimizer, EMA, encoding, network) and
``src/testbed_sdf.cu`` (the mesh's placement, the training-point mix, the IoU). No torch here:
the command line builds its parser from :data:`PRESETS` without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from nerfmine.fit_config import FitConfig

MINING_CHOICES = ("hsm", "hsm-error", "none")

LOGISTIC_SCALE = math.sqrt(3.0) / 2.0 / 1024.0
"""instant-ngp's scale s of the logistic perturbation of surface points: the bounding radius of
the unit cube the mesh is placed in (half its diagonal, sqrt(3)/2) over 1024, per axis
(``testbed_sdf.cu``: ``m_bounding_radius / 1024``)."""


@dataclass(frozen=True)
class SdfConfig(FitConfig):
    """One SDF fit. Defaults: instant-ngp's SDF setting for a GPU. The shared checks, the dict
    round trip and the presets are :class:`~nerfmine.fit_config.FitConfig`'s."""

    NAME: ClassVar[str] = "sdf"
    MINING_CHOICES: ClassVar[tuple[str, ...]] = MINING_CHOICES
    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = (
        "n_levels", "n_features", "base_resolution", "hidden_dim", "iou_points",
        "samples_per_step", "eval_every", "eval_chunk", "lr_decay_interval")

    preset: str = "gpu"
    """The preset these values started from (recorded, not interpreted)."""
    n_levels: int = 16
    """Hash-grid levels L (paper: 16)."""
    n_features: int = 2
    """Features per level F (paper: 2)."""
    log2_table_size: int = 19
    """log2 T, entries per level (paper: 19)."""
    base_resolution: int = 16
    """Coarsest grid resolution Nmin (paper: 16)."""
    max_resolution: int = 2048
    """Finest grid resolution Nmax over the unit cube (instant-ngp: 2048 x aabb_scale, and an
    SDF's aabb_scale is 1: the mesh is placed in the unit cube)."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers (paper: 64)."""
    n_hidden_layers: int = 2
    """Hidden layers of the MLP (paper: 2); ReLU, no biases, one linear output (the distance)."""
    lr: float = 1e-4
    """Adam learning rate (configs/sdf/base.json)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (base.json)."""
    eps: float = 1e-15
    """Adam epsilon (base.json)."""
    l2_reg: float = 1e-6
    """L2 regularisation added to the MLP weights' gradients (base.json's l2_reg; our MAPE is
    tiny-cuda-nn's, a mean over the batch, so the value means the same)."""
    lr_decay_start: int = 10000
    """Step from which the learning rate decays (base.json's ExponentialDecay)."""
    lr_decay_interval: int = 5000
    """Steps between two decays (base.json)."""
    lr_decay_base: float = 0.33
    """Factor of each decay (base.json)."""
    ema_decay: float = 0.95
    """Decay of the exponential moving average of the weights used for evaluation and export."""
    samples_per_step: int = 2**18
    """B, points per step, drawn uniformly (with replacement) from the pool (instant-ngp: 2^18)."""
    pool_size: int = 2**22
    """Points with ground-truth distances computed once per run (libigl, on the CPU cores);
    each step draws its B points from them. See :mod:`nerfmine.sdf.samples` for why a pool."""
    bbox_padding: float = 0.005
    """The mesh's bounding box grows by this fraction of its diagonal on every side (instant-ngp's
    ``inflation``); uniform training points and IoU points lie in the grown box."""
    logistic_scale: float = LOGISTIC_SCALE
    """Scale s of the logistic perturbation of 3/8 of the surface points, per axis, in unit-cube
    units (instant-ngp: sqrt(3)/2 / 1024)."""
    iou_points: int = 2**20
    """Uniform points in the box at which IoU compares the signs of the model and the mesh (a
    fixed set per run; instant-ngp's calculate_iou defaults to 128 Mi points)."""
    steps: int = 10000
    """Training steps in all, an upper bound when ``seconds`` is set too (a resumed run may
    raise it)."""
    eval_every: int = 1000
    """Steps between two IoU points of the curve (off the clock)."""
    seconds: float | None = None
    """Time budget in seconds of training clock (the steps only; evaluations, checkpoints and
    outputs excluded): training stops once the clock reaches it, or at ``steps``, whichever
    comes first; None: ``steps`` alone (``--seconds`` without ``--steps`` lifts ``steps``:
    :func:`~nerfmine.fit_config.lift_step_limit`). With a budget or ``eval_at`` the loop reads
    the clock every few steps (:mod:`nerfmine.fit_loop` says how far it can overshoot)."""
    eval_at: tuple[float, ...] = ()
    """Seconds of training clock at which to evaluate (IoU); each curve point records the clock
    it was actually taken at, the first reading at or past the point. When given,
    ``eval_every`` is not used."""
    mesh_resolution: int = 256
    """Grid vertices per axis of the marching cubes of the final zero level set."""
    mining: str = "none"
    """"none" (the default here): the plain MAPE step. "hsm": online hard sample mining over
    the step's points, importance = |dL/dpred| (the paper's rule); "hsm-error": the same draw
    with importance = the point's MAPE term |pred - d| / (|d| + 0.01). MAPE's gradient
    magnitude, 1 / (|d| + 0.01), ignores the error, so the paper's rule draws almost only
    near-surface points and, on a CPU sphere, ended below a model that calls every point
    inside (IoU 0.36-0.40 against 0.72-0.96 plain; :mod:`nerfmine.sdf.fit`); "hsm-error"
    matched the plain step in one short CPU run. Mining stays off by default for SDFs until
    GPU runs over several meshes and seeds show a gain."""
    backend: str = "auto"
    """Hash-grid and Adam backend: "triton" on CUDA, "torch" (the reference) on CPU."""
    device: str = "auto"
    """"cuda" when available, else "cpu"."""
    seed: int = 0
    """Seeds the weights, the pool, the IoU points, the step's draws and the miner's draws."""
    eval_chunk: int = 2**18
    """Points per forward pass at evaluation and export."""

    def _problems(self) -> list[str]:
        problems = []
        if self.pool_size < 8:
            problems.append(f"pool_size must be at least 8, got {self.pool_size}")
        if self.max_resolution < self.base_resolution:
            problems.append("max_resolution must not be below base_resolution")
        if not 2 <= self.mesh_resolution <= 1024:
            problems.append(f"mesh_resolution must lie in [2, 1024], got {self.mesh_resolution}")
        if self.steps < 0 or self.n_hidden_layers < 0 or self.lr_decay_start < 0:
            problems.append("steps, n_hidden_layers and lr_decay_start must not be negative")
        if not (0 <= self.ema_decay < 1 and self.bbox_padding >= 0 and self.logistic_scale > 0):
            problems.append("ema_decay must lie in [0, 1), bbox_padding >= 0, logistic_scale > 0")
        return problems

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): instant-ngp's ExponentialDecay."""
        if step < self.lr_decay_start:
            return self.lr
        return self.lr * self.lr_decay_base ** ((step - self.lr_decay_start)
                                                // self.lr_decay_interval + 1)


#: Named starting points. "gpu" is instant-ngp's setting; "cpu" fits a simple mesh (a sphere)
#: to IoU ~0.9 in a few hundred steps with the torch reference on a CPU: 8 levels, a smaller
#: table, batch, pool and IoU set, a coarser finest level and a 10x learning rate (lr 1e-4
#: needs thousands of steps, too slow on a CPU).
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"n_levels": 8, "log2_table_size": 14, "max_resolution": 128,
            "samples_per_step": 2**11,
            "pool_size": 2**16, "iou_points": 2**16, "steps": 300, "eval_every": 100,
            "mesh_resolution": 64, "eval_chunk": 2**15, "lr": 1e-3},
}


def make_config(preset: str, overrides: dict[str, Any] | None = None) -> SdfConfig:
    """The config of preset ``preset`` of :data:`PRESETS` under ``overrides``."""
    return SdfConfig.from_preset(PRESETS, preset, overrides)
