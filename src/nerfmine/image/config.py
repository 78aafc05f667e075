"""Settings of an image fit: a frozen dataclass with the paper's values as defaults, and presets.

No torch here: the command line builds its parser from :data:`PRESETS` without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nerfmine.fit_config import FitConfig

MINING_CHOICES = ("hsm", "none")
PIXELS_ON_CHOICES = ("auto", "device", "host")


@dataclass(frozen=True)
class ImageConfig(FitConfig):
    """One image fit. Defaults: instant-ngp's image setting for a GPU (paper Sec. 5.1). The
    shared checks, the dict round trip and the presets are
    :class:`~nerfmine.fit_config.FitConfig`'s."""

    NAME: ClassVar[str] = "image"
    MINING_CHOICES: ClassVar[tuple[str, ...]] = MINING_CHOICES
    AT_LEAST_ONE: ClassVar[tuple[str, ...]] = (
        "n_levels", "n_features", "base_resolution", "hidden_dim", "pixels_per_step",
        "eval_every", "render_tile")

    preset: str = "gpu"
    """The preset these values started from (recorded, not interpreted)."""
    n_levels: int = 16
    """Hash-grid levels L (paper: 16)."""
    n_features: int = 2
    """Features per level F (paper: 2)."""
    log2_table_size: int = 22
    """log2 T, entries per level. At the finest level (half the width) an image W pixels wide
    has (W/2)^2 vertices: 2^22 keeps every level of an image up to 4096 px dense (no hash
    collisions) at 32 MiB of fp32 per full level; gigapixel images want the paper's 2^24."""
    base_resolution: int = 16
    """Coarsest grid resolution Nmin (paper: 16)."""
    max_resolution: int = 0
    """Finest grid resolution; 0 means half the image width (the paper's image setting), at
    least ``base_resolution``."""
    hidden_dim: int = 64
    """Width of the MLP's hidden layers (paper: 64)."""
    n_hidden_layers: int = 2
    """Hidden layers of the MLP (paper: 2); ReLU, no biases, linear RGB output."""
    lr: float = 1e-2
    """Adam learning rate (paper)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (paper)."""
    eps: float = 1e-15
    """Adam epsilon (paper)."""
    pixels_per_step: int = 2**18
    """B, pixels drawn uniformly (with replacement) per step (paper: 2^18)."""
    steps: int = 10000
    """Training steps in all, an upper bound when ``seconds`` is set too (a resumed run may
    raise it)."""
    eval_every: int = 500
    """Steps between two PSNR points of the curve (full-image renders, off the clock)."""
    seconds: float | None = None
    """Time budget in seconds of training clock (the steps only; evaluations, checkpoints and
    outputs excluded): training stops once the clock reaches it, or at ``steps``, whichever
    comes first; None: ``steps`` alone (``--seconds`` without ``--steps`` lifts ``steps``:
    :func:`~nerfmine.fit_config.lift_step_limit`). With a budget or ``eval_at`` the loop reads
    the clock every few steps (:mod:`nerfmine.fit_loop` says how far it can overshoot)."""
    eval_at: tuple[float, ...] = ()
    """Seconds of training clock at which to evaluate (PSNR); each curve point records the clock
    it was actually taken at, the first reading at or past the point. When given,
    ``eval_every`` is not used."""
    mining: str = "hsm"
    """"hsm": online hard sample mining over the step's pixels; "none": the plain L2 step."""
    backend: str = "auto"
    """Hash-grid and Adam backend: "triton" on CUDA, "torch" (the reference) on CPU."""
    device: str = "auto"
    """"cuda" when available, else "cpu"."""
    seed: int = 0
    """Seeds the initial weights, the pixel draws and the miner's draws."""
    render_tile: int = 2**18
    """Pixels per forward pass of the full-resolution render."""
    pixels_on: str = "auto"
    """Where the target pixels live: "device" (the whole image as float32), "host" (gathered
    per step from memory or a memory-mapped .npy file: images larger than the device's
    memory) or "auto" (host for a .npy file or an image over a quarter of the device's free
    memory). Both give the same fit."""

    def _problems(self) -> list[str]:
        problems = []
        if self.steps < 0 or self.n_hidden_layers < 0 or self.max_resolution < 0:
            problems.append("steps, n_hidden_layers and max_resolution must not be negative")
        if self.pixels_on not in PIXELS_ON_CHOICES:
            problems.append(f"pixels_on must be one of {', '.join(PIXELS_ON_CHOICES)}, got "
                            f"{self.pixels_on!r}")
        return problems

    def finest_resolution(self, width: int) -> int:
        return max(self.max_resolution or width // 2, self.base_resolution)


#: Named starting points. "gpu" is the paper's setting; "cpu" is small enough to fit a few
#: hundred pixels wide image in a minute or two on a laptop's CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"log2_table_size": 16, "pixels_per_step": 2**12, "steps": 1000, "eval_every": 100,
            "render_tile": 2**14},
}


def make_config(preset: str, overrides: dict[str, Any] | None = None) -> ImageConfig:
    """The config of preset ``preset`` of :data:`PRESETS` under ``overrides``."""
    return ImageConfig.from_preset(PRESETS, preset, overrides)
