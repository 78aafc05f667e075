"""Run configuration: nested, frozen dataclasses with a docstring per field, and presets.

Every run writes its resolved config (``config.json``) next to its outputs; loading a config
rejects unknown keys. Presets hold the values that differ between a GPU run (the paper's
setting) and a CPU run; the trainer itself has no per-device branches for hyperparameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nerfmine.config_schema import (  # noqa: F401 - CONFIG_VERSION, upgrade_layout re-exported
    CONFIG_VERSION,
    LAYOUT_1_MOVES,
    check_field,
    field_types,
    upgrade_layout,
)
from nerfmine.errors import ConfigError
from nerfmine.field import ModelConfig
from nerfmine.json_files import read_json_file, shown
from nerfmine.miner import MinerConfig
from nerfmine.occupancy import OccupancyConfig
from nerfmine.ops.scene_box import MAX_AABB_SCALE, cascades_for_aabb_scale, default_cone_angle
from nerfmine.optim import OptimConfig


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None
    """Scene: a NeRF-synthetic folder (transforms_<split>.json), or an instant-ngp / nerfstudio
    transforms.json (file or folder). None trains the bundled demo scene."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str = "test"
    """Split used for evaluation (lego_400 has train and test only)."""
    downscale: int = 1
    """Integer factor by which images are shrunk (area averaging) when loaded."""
    holdout_every: int = 8
    """A single transforms.json is split by holding out every N-th frame (sorted by file name)
    for evaluation: the field's convention (benchmark-protocol.md)."""
    skip_missing: bool = False
    """Train on the frames whose images exist when a transforms.json names missing ones."""
    min_sharpness: float | None = None
    """Drop the frames of a transforms.json whose per-frame ``sharpness`` (instant-ngp's
    colmap2nerf writes the variance of each image's Laplacian) is below this, before the
    hold-out; None keeps every frame."""
    scale: float = 0.33
    """World-to-unit-cube scale: x_unit = x_world * scale + offset. Recorded from the scene when
    a run starts (instant-ngp's 0.33 unless a transforms.json gives its own); renders and
    exports read it here."""
    offset: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """World-to-unit-cube offset per axis, recorded from the scene like ``scale``."""
    images_on_host: bool = False
    """Keep the training images in host memory (pinned on CUDA) instead of on the device: each
    step gathers its pixels on the host and copies them over without blocking (--images-on-host).
    Frees the images' device memory for a small cost per step."""
    memory_fit: str = "check"
    """What to do when the memory estimate made before the images are decoded
    (nerfmine.memory) exceeds the memory available: "check" stops with the figures and the
    options, "auto" applies them (--auto-fit: images on the host, else the smallest
    --downscale that fits), "off" skips the check (--no-memory-check)."""
    memory_estimate: dict | None = None
    """Recorded when a run starts: the estimate of host and device bytes, the memory available
    and what was done about it (see nerfmine.memory). Not read back."""
    aabb_scale: float | None = None
    """Size of the modelled box, 0.5 +- aabb_scale / 2 in unit-cube coordinates (instant-ngp's
    aabb_scale, at most 128): above 1 the occupancy grid gets 1 + ceil(log2 aabb_scale)
    cascades and marching steps grow with distance. None: the scene's (a transforms.json's
    aabb_scale, 1 for NeRF-synthetic); a run records the value it used."""


@dataclass(frozen=True)
class MarchConfig:
    """Ray marching and compositing, shared by training and rendering (instant-ngp's)."""

    step_size: float = math.sqrt(3) / 1024
    """Marching step in the unit cube (instant-ngp: sqrt(3)/1024); the smallest step when the
    steps grow (cone_angle > 0)."""
    max_steps_per_ray: int = 1024
    """Most marching steps per ray (instant-ngp)."""
    cone_angle: float | None = None
    """Exponential stepping: dt = clamp(t * cone_angle, step_size, max step). None: instant-ngp's
    choice, 0 (constant steps) for aabb_scale 1 and 1/256 above; a run records the value."""
    min_transmittance: float = 1e-4
    """A sample is composited while the transmittance before it is at least this."""


@dataclass(frozen=True)
class EvalConfig:
    """How a run's test views are rendered and scored (benchmark-protocol.md)."""

    max_images: int | None = None
    """Evaluate only the first N images of the evaluation split (None: all, as the protocol;
    --eval-images)."""
    rays_per_chunk: int = 1 << 16
    """Rays rendered at once."""
    save_renders: bool = True
    """Write the final evaluation's renders as PNG."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (budget, evaluation points, checkpoints) and its step."""

    seed: int = 0
    """Seed of every random draw of the run (rays, jitter, occupancy, mining, init)."""
    max_steps: int | None = None
    """Budget in training steps (exactly one of max_steps and max_seconds is set)."""
    max_seconds: float | None = None
    """Budget in seconds of training clock (evaluation and checkpoints excluded)."""
    eval_at: tuple[float, ...] = ()
    """Evaluation points, in the budget's unit (seconds or steps); the end is always evaluated."""
    checkpoint_every: float = 60.0
    """Seconds of training clock between checkpoints (also written at each evaluation)."""
    target_samples: int = 1 << 18
    """Samples per step the ray count adapts to; also the fixed capacity of the packed buffers."""
    subpixel: bool = False
    """True: train on rays through a random point of each drawn pixel (instant-ngp); False
    (default): through the pixel's centre (torch-ngp), where evaluation and renders sample
    too. A pixel's colour is its area's average, which a ray through one random point of it
    does not see (measured on lego_400: BENCHMARKS.md, "What moves lego_400 quality")."""
    initial_rays: int = 4096
    """Rays in the first step (instant-ngp starts at 4096)."""
    ray_granularity: int = 128
    """The adaptive ray count is a multiple of this."""
    max_rays: int = 1 << 18
    """Upper bound of the adaptive ray count."""
    mixed_precision: bool = True
    """fp16 autocast with loss scaling for the MLPs (CUDA only; ignored on CPU)."""
    fused_inference_mlp: bool = True
    """Run the MLPs of passes without a backward (mining's first pass, evaluation renders) as
    one Triton kernel (triton backend with mixed precision; nerfmine.ops.mlp); False keeps the
    layer-by-layer path through cuBLAS. Same outputs; the timings are in BENCHMARKS.md."""
    first_pass_chunk: int = 1 << 17
    """Samples per chunk of the mining's first forward (no graph): bounds its transient memory,
    so that the mining step's peak is set by its (smaller) graph (the size was chosen on an
    H200: BENCHMARKS.md, "Chunked mining passes")."""
    second_pass_chunk: int = 1 << 16
    """Samples per chunk of the mining's second pass (forward with a graph, then backward):
    the injected gradients are known from the first pass, so each chunk's backward can run on
    its own and the graph of at most this many samples is alive at once. 2^16 holds the usual
    b (0.13-0.15 of 2^18) in one chunk; each extra chunk costs a round of small kernels, and
    only the first steps (b up to B/2) need two."""
    cuda_graphs: bool = True
    """Replay each training step as a captured CUDA graph (CUDA with the triton backend only):
    one launch instead of hundreds. The ray count and the mining buffer then live on fixed,
    bucketed sizes; see docs/design.md, "CUDA graphs"."""


@dataclass(frozen=True)
class RunConfig:
    preset: str = "gpu"
    """Name of the preset the run started from (recorded, not used after resolution)."""
    backend: str = "torch"
    """Kernel backend: "torch" (pure PyTorch, any device) or "triton" (CUDA)."""
    device: str = "cpu"
    """Torch device of the run."""
    mining: str = "hsm"
    """"hsm": online hard sample mining (Korhonen et al. 2024); "none": plain Instant-NGP."""
    config_version: int = CONFIG_VERSION
    """Layout of this config: 2 since the march, optim and eval sections (1: before, when
    their fields were in train; old files are upgraded on load, see upgrade_layout)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    march: MarchConfig = field(default_factory=MarchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the config as JSON, atomically (a killed write leaves the previous file)."""
        from nerfmine.run_folder import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


# Values that change between presets. "gpu" is instant-ngp's NeRF setting. "cpu" shrinks the
# work per step so that the bundled 100x100 demo scene trains in minutes on two cores: a 2^16
# table and finest resolution 512 (the demo images are 100 px wide), 2^13 samples per step,
# a 64^3 occupancy grid, and a plain fp32 step. Default budgets: 240 s of training clock
# evaluated at 15, 30, 60, 120 and 240 s on a GPU (the benchmark protocol); 300 s evaluated at
# 60 and 300 s on a CPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpu": {"train": {"max_seconds": 240.0, "eval_at": (15.0, 30.0, 60.0, 120.0)}},
    "cpu": {
        "model": {"log2_table_size": 16, "max_resolution": 512},
        "occupancy": {"resolution": 64, "chunk_size": 1 << 16},
        "train": {
            "target_samples": 1 << 13,
            "initial_rays": 512,
            "ray_granularity": 32,
            "mixed_precision": False,
            "max_seconds": 300.0,
            "eval_at": (60.0,),
        },
        "eval": {"rays_per_chunk": 1 << 12},
    },
}

_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "occupancy": OccupancyConfig,
    "march": MarchConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "miner": MinerConfig,
}
_TOP_LEVEL = {"preset", "backend", "device", "mining", "config_version"}
MEMORY_FIT_MODES = ("check", "auto", "off")


def _checked_section(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """The entries of config section ``where`` (dataclass ``cls``) with their values checked
    against the fields' types and converted; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        moved = [f"{where}.{k} is now {'.'.join(LAYOUT_1_MOVES[(where, k)])}" for k in unknown
                 if (where, k) in LAYOUT_1_MOVES]
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + '.' + str(k) for k in unknown)}; "
            + (f"{'; '.join(moved)} (the config layout of nerfmine 0.2); " if moved else "")
            + f"valid keys of '{where}' are: {', '.join(sorted(names))}"
        )
    hints = field_types(cls)
    return {key: check_field(value, hints[key], f"{where}.{key}")
            for key, value in values.items()}


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    return cls(**_checked_section(cls, values, where))


def _checked_top_level(values: dict[str, Any]) -> dict[str, Any]:
    """The top-level entries of a config dict (preset, backend, ...) checked and converted;
    unknown keys and sections that are not objects are errors. Sections are returned as
    given."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be an object of sections like "
                          f'{{"optim": {{"lr": 0.01}}}}, got {shown(values)}')
    unknown = sorted(set(values) - _TOP_LEVEL - set(_SECTIONS), key=str)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(map(str, unknown))}; valid top-level keys are "
            f"{', '.join(sorted(_TOP_LEVEL | set(_SECTIONS)))}"
        )
    hints = field_types(RunConfig)
    out = {k: check_field(values[k], hints[k], k) for k in _TOP_LEVEL if k in values}
    for name in _SECTIONS:
        if name in values:
            if not isinstance(values[name], dict):
                raise ConfigError(f"config section '{name}' must be a mapping (an object of "
                                  f"its fields), got {shown(values[name])}")
            out[name] = values[name]
    return out


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a (possibly partial) nested dict; unknown keys and values of the
    wrong type are errors naming the field."""
    values = _checked_top_level(values)
    kwargs: dict[str, Any] = {k: values[k] for k in _TOP_LEVEL if k in values}
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build_section(cls, values.get(name, {}), name)
    config = RunConfig(**kwargs)
    validate(config)
    return config


def check_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Config overrides (a partial config dict, e.g. a ``--config`` file) with every given
    value checked against its field's type and converted, without building a config: the
    errors name the field before the overrides are merged with a preset and flags."""
    values = _checked_top_level(values)
    for name, cls in _SECTIONS.items():
        if name in values:
            values[name] = _checked_section(cls, values[name], name)
    return values


def _read_config_dict(path: Path, what: str) -> tuple[dict[str, Any], list[str]]:
    """The JSON object in ``path`` in today's layout (:func:`upgrade_layout`) and what moved."""
    values = read_json_file(path, ConfigError, what)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of config sections like "
                          f'{{"optim": {{"lr": 0.01}}}}, as in a run\'s config.json; got '
                          f"{type(values).__name__}")
    return upgrade_layout(values, where=str(path))


def _naming(path: Path, exc: ConfigError) -> ConfigError:
    """``exc`` with ``path`` in front of its message, unless it names the file already."""
    text = str(exc)
    return exc if str(path) in text else ConfigError(f"{path}: {text}")


def load_config(path: Path) -> RunConfig:
    """The complete config in ``path`` (a run's config.json); every error names the file."""
    path = Path(path)
    values, _ = _read_config_dict(path, "config file")
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise _naming(path, exc) from None


def load_overrides(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The overrides in a ``--config`` file (a partial config, nested like config.json) in
    today's layout, each value checked against its field's type (:func:`check_overrides`),
    and the moves of an older layout for a note. Every error names the file and the field."""
    path = Path(path)
    values, moved = _read_config_dict(path, "config file")
    try:
        return check_overrides(values), moved
    except ConfigError as exc:
        raise _naming(path, exc) from None


def merge_overrides(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in section by section (nested dicts merge, other values
    replace); neither argument is changed."""
    if not isinstance(update, dict):
        raise ConfigError(f"config overrides must be an object of sections like "
                          f'{{"optim": {{"lr": 0.01}}}}, got {shown(update)}')
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = value
    return out


def make_config(preset: str = "auto", overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config of a new run: a preset ("gpu", "cpu" or "auto") plus nested overrides.

    "auto" picks "gpu" when CUDA is available, else "cpu". The backend defaults to "triton" on
    CUDA when the Triton kernels import, else "torch".
    """
    import torch

    cuda = torch.cuda.is_available()
    if preset == "auto":
        preset = "gpu" if cuda else "cpu"
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; choose one of auto, {', '.join(PRESETS)}")
    values: dict[str, Any] = {"preset": preset, "device": "cuda" if cuda else "cpu"}
    values = merge_overrides(values, PRESETS[preset])
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"config overrides must be an object of sections like "
                          f'{{"optim": {{"lr": 0.01}}}}, got {shown(overrides)}')
    given = overrides.get("train", {})
    if isinstance(given, dict) and ("max_steps" in given or "max_seconds" in given):
        # A budget given by the caller replaces the preset's default budget and points.
        values["train"] = {k: v for k, v in values.get("train", {}).items()
                           if k not in ("max_steps", "max_seconds", "eval_at")}
    values = merge_overrides(values, overrides)
    if values.get("backend", "auto") == "auto":
        values["backend"] = default_backend(values["device"])
    config = config_from_dict(values)
    check_eval_points(config)
    return config


def default_backend(device: str) -> str:
    """"triton" on a CUDA device when every Triton kernel is importable, else "torch"."""
    if not device.startswith("cuda"):
        return "torch"
    try:
        from nerfmine.ops import backends

        return "triton" if backends.triton_available() else "torch"
    except ImportError:
        return "torch"


def validate(config: RunConfig) -> None:
    """Reject values that cannot work, naming the field and what was expected."""
    t = config.train
    if config.config_version != CONFIG_VERSION:
        raise ConfigError(f"config_version {config.config_version!r}: this nerfmine reads "
                          f"layout {CONFIG_VERSION} (and upgrades 1); was the file written by a "
                          "newer nerfmine?")
    if config.backend not in ("torch", "triton"):
        raise ConfigError(
            f"backend must be 'torch' or 'triton' (or 'auto'), got '{config.backend}'")
    if (config.backend == "triton" and not config.device.startswith("cuda")
            and os.environ.get("TRITON_INTERPRET") != "1"):
        raise ConfigError("backend 'triton' needs a CUDA GPU; use --backend torch on this machine")
    if config.mining not in ("hsm", "none"):
        raise ConfigError(f"mining must be 'hsm' or 'none', got '{config.mining}'")
    if (t.max_steps is None) == (t.max_seconds is None):
        raise ConfigError("set exactly one budget: train.max_steps (--steps) or "
                          "train.max_seconds (--seconds)")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"train.max_steps must be at least 1, got {t.max_steps}")
    if t.max_seconds is not None and not t.max_seconds > 0:
        raise ConfigError(f"train.max_seconds must be positive, got {t.max_seconds}")
    if any(not (p > 0) for p in t.eval_at):
        raise ConfigError(f"train.eval_at points must be positive, got {list(t.eval_at)}")
    if config.data.memory_fit not in MEMORY_FIT_MODES:
        raise ConfigError(f"data.memory_fit must be one of {', '.join(MEMORY_FIT_MODES)}, got "
                          f"{config.data.memory_fit!r}")
    if not isinstance(config.data.images_on_host, bool):
        raise ConfigError(f"data.images_on_host must be true or false, got "
                          f"{config.data.images_on_host!r}")
    ms = config.data.min_sharpness
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float))
                           or not math.isfinite(ms) or ms < 0):
        raise ConfigError(f"data.min_sharpness (--min-sharpness) must be a number >= 0, got {ms!r}")
    if config.data.downscale < 1:
        raise ConfigError(f"data.downscale must be an integer >= 1, got {config.data.downscale}")
    e = config.eval
    if e.max_images is not None and e.max_images < 1:
        raise ConfigError(f"eval.max_images (--eval-images) must be at least 1, got "
                          f"{e.max_images}")
    if not t.checkpoint_every > 0:
        raise ConfigError(f"train.checkpoint_every must be positive, got {t.checkpoint_every}")
    if t.first_pass_chunk < 1 or t.second_pass_chunk < 1 or e.rays_per_chunk < 1:
        raise ConfigError("train.first_pass_chunk, train.second_pass_chunk and "
                          "eval.rays_per_chunk must be >= 1")
    if config.data.aabb_scale is not None and not config.data.aabb_scale > 0:
        raise ConfigError(f"data.aabb_scale must be positive, got {config.data.aabb_scale}")
    if config.march.cone_angle is not None and not config.march.cone_angle >= 0:
        raise ConfigError(f"march.cone_angle must be >= 0, got {config.march.cone_angle}")
    if t.target_samples < 256:
        raise ConfigError(f"train.target_samples must be at least 256, got {t.target_samples}")
    m = config.miner
    if not 0 < m.min_fraction <= m.max_fraction <= 1:
        raise ConfigError("miner fractions must satisfy 0 < min_fraction <= max_fraction <= 1, "
                          f"got {m.min_fraction} and {m.max_fraction}")


def check_eval_points(config: RunConfig) -> None:
    """train.eval_at points past the budget are never reached (the loop stops at the budget,
    then evaluates the end): a ConfigError naming them, the budget and the fix. A point at the
    budget is the end's evaluation and is accepted. Checked where a user gives a config
    (:func:`make_config`, a resume that sets points), not when a saved run is loaded: a run
    resumed with a shorter budget simply never reaches its later points."""
    t = config.train
    seconds = t.max_seconds is not None
    budget = t.max_seconds if seconds else t.max_steps
    beyond = sorted(p for p in t.eval_at if p > budget)
    if not beyond:
        return
    unit = "seconds" if seconds else "steps"
    field, flag = (("train.max_seconds", "--seconds") if seconds
                   else ("train.max_steps", "--steps"))
    preset = PRESETS.get(config.preset, {}).get("train", {})
    default = (" (the preset's default budget, used when neither --steps nor --seconds is "
               "given)" if preset.get(field.split(".")[1]) == budget else "")
    points = ("points " if len(beyond) > 1 else "point ") + ", ".join(f"{p:g}" for p in beyond)
    lie = "lie" if len(beyond) > 1 else "lies"
    other = ("; if the points are step counts, give the budget in steps with --steps "
             "(train.max_steps)" if seconds else
             "; if the points are seconds, give the budget in seconds with --seconds "
             "(train.max_seconds)")
    raise ConfigError(
        f"train.eval_at (--eval-at) {points} {lie} beyond the budget {field} ({flag}) = "
        f"{budget:g} {unit}{default}: training stops at the budget, so they would never be "
        f"evaluated (the end always is). Evaluation points are in the budget's unit, {unit} "
        f"here: give points up to {budget:g}, or raise the budget with {flag}{other}.")


# Fields whose change alters tensor shapes or the meaning of the state: a resumed run must keep
# them. The budget, evaluation points and checkpoint cadence may change on resume.
RESUMABLE_CHANGES = {
    ("data", "images_on_host"),  # where the images live, not what is learnt
    ("data", "memory_fit"),
    ("data", "memory_estimate"),  # a record of the machine the run started on
    ("train", "max_steps"),
    ("train", "max_seconds"),
    ("train", "eval_at"),
    ("train", "checkpoint_every"),
    ("eval", "max_images"),
    ("eval", "save_renders"),
    ("eval", "rays_per_chunk"),
    ("train", "cuda_graphs"),
    ("train", "first_pass_chunk"),
    ("train", "second_pass_chunk"),
    ("train", "fused_inference_mlp"),
}


def check_resume_compatible(saved: RunConfig, new: RunConfig) -> None:
    """Raise ConfigError naming every field that differs and may not change on resume."""
    a, b = saved.to_dict(), new.to_dict()
    problems = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict):
            for sub in sorted(set(a[key]) | set(b.get(key, {}))):
                if (key, sub) in RESUMABLE_CHANGES:
                    continue
                va, vb = a[key].get(sub), b.get(key, {}).get(sub)
                if _norm(va) != _norm(vb):
                    problems.append(f"{key}.{sub}: checkpoint has {va!r}, now {vb!r}")
        elif key not in ("preset", "config_version") and _norm(a.get(key)) != _norm(b.get(key)):
            problems.append(f"{key}: checkpoint has {a.get(key)!r}, now {b.get(key)!r}")
    if problems:
        raise ConfigError(
            "the checkpoint was written by a run with another config; these fields may not "
            "change on resume:\n  " + "\n  ".join(problems)
            + "\nStart a new run instead, or resume with the original settings."
        )


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class SceneFacts(Protocol):
    """What config resolution reads of a loaded training split (a SceneData)."""

    aabb_scale: float
    scale: float
    offset: tuple


def resolve_for_scene(config: RunConfig, scene: SceneFacts | None) -> tuple[RunConfig, list[str]]:
    """The config a run uses on ``scene`` (its training split; None when a run is loaded
    without its data): every ``None`` that means "the scene's" replaced by the value used, so
    that config.json records it. Pure: reads nothing else and changes nothing.

    - ``data.scale`` / ``data.offset``: the scene's world-to-unit-cube transform (recorded for
      renders and exports; a loaded run keeps its recorded values);
    - ``data.aabb_scale``: the config's, else the scene's (a transforms.json's), else 1 (a run
      recorded before the field existed modelled the unit cube); at most 128 (instant-ngp);
    - ``occupancy.cascades``: 1 + ceil(log2 aabb_scale) unless set;
    - ``march.cone_angle``: 0 for aabb_scale 1, 1/256 above, unless set.

    Returns the config and notes for the user (what was chosen from the scene).
    """
    d, m, o = config.data, config.march, config.occupancy
    notes: list[str] = []
    if scene is not None:
        d = dataclasses.replace(d, scale=float(scene.scale),
                                offset=tuple(float(v) for v in scene.offset))
    aabb_scale = d.aabb_scale
    if aabb_scale is None:
        aabb_scale = float(scene.aabb_scale) if scene is not None else 1.0
    aabb_scale = min(float(aabb_scale), MAX_AABB_SCALE)
    cascades = o.cascades if o.cascades is not None else cascades_for_aabb_scale(aabb_scale)
    cone = m.cone_angle if m.cone_angle is not None else default_cone_angle(aabb_scale)
    if scene is not None and d.aabb_scale is None and scene.aabb_scale > 1:
        notes.append(f"aabb_scale {aabb_scale:g}: {cascades} occupancy cascades, exponential "
                     f"stepping with cone angle {cone:g}")
    return dataclasses.replace(
        config, data=dataclasses.replace(d, aabb_scale=aabb_scale),
        occupancy=dataclasses.replace(o, cascades=cascades),
        march=dataclasses.replace(m, cone_angle=float(cone))), notes

