"""Memory estimate made before a run decodes its images, and what to do when it will not fit.

:func:`fit_memory` reads the image sizes from the files' headers (the loaders' ``decode=False``),
adds up the bytes the run will hold in host memory and on the device, compares them with the
memory available, and then:

- records the estimate in ``config.data.memory_estimate`` (it goes into ``config.json``) and
  returns a one-line summary for the run's notes;
- when the estimate does not fit and ``data.memory_fit`` is ``"check"`` (the default), stops
  with a :class:`MemoryFitError` that gives the figures and the options (``--images-on-host``,
  ``--downscale N`` with the smallest N that fits, ``--auto-fit``);
- with ``"auto"`` (``--auto-fit``) applies them: images kept on the host when that is enough
  (full resolution, a small cost per step), else the smallest ``--downscale`` that fits (with
  the images on the host if that allows a smaller factor);
- with ``"off"`` (``--no-memory-check``) only records the estimate.

What is counted (bytes; P = parameters of the hash table and the MLPs, C = train.target_samples,
R = train.max_rays):

- images: N x H x W x 4 (uint8 RGBA after --downscale) for the training split, on the device
  (or on the host with images_on_host, plus one more copy while they are pinned); the
  evaluation split's images on the host (evaluation moves one image at a time);
- model: parameters 4P, gradients 4P, Adam moments 8P, EMA weights 4P (all fp32), plus the
  autocast fp16 copy 2P on a CUDA run with mixed precision;
- occupancy grid: cascades x resolution^3 x (4 B density + 1 B bitfield + 1 B visible mask);
- packed samples: C x 40 B (positions, directions, t, dt, ray ids), plus C x 32 B for mining's
  cached outputs and output gradients; rays of a step: R x ``RAY_BYTES``;
- activations: C x ``ACTIVATION_BYTES_PER_SAMPLE[backend]`` (x ``FP32_ACTIVATION_FACTOR``
  without mixed precision). The per-sample figures come from the training increments measured on
  an H200 (BENCHMARKS.md, lego_400, 2^18 samples per step): Triton baseline 248 MiB and torch
  reference 479 MiB, less the table's gradient (46.5 MiB), the fp16 table copy (23 MiB), the
  packed buffers (10 MiB) and, for the reference row, the Adam moments (98 MiB) it still
  allocated in the step: about 670 and 1200 B per sample, rounded up to 768 and 1280.
  ``FP32_ACTIVATION_FACTOR`` (1.5, for runs without fp16 autocast, e.g. on a CPU) is an
  allowance, not a measurement.

Available memory: the device's free memory (``torch.cuda.mem_get_info``) and the host's
``MemAvailable`` (/proc/meminfo; ``os.sysconf`` elsewhere). A run fits when each total is at
most ``HEADROOM`` of what is available (allocator fragmentation, the evaluation's render chunks,
Python and library overheads are not counted). On a CPU run the device is the host: everything
is counted there. The estimate is an estimate: ``--no-memory-check`` runs anyway.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nerfmine.config import RunConfig
from nerfmine.errors import DataError, NerfmineError
from nerfmine.ops.hash_grid import HashGridSpec
from nerfmine.ops.scene_box import cascades_for_aabb_scale

HEADROOM = 0.9
ACTIVATION_BYTES_PER_SAMPLE = {"triton": 768, "torch": 1280}
FP32_ACTIVATION_FACTOR = 1.5
PACKED_SAMPLE_BYTES = 40
MINING_SAMPLE_BYTES = 32
RAY_BYTES = 160
MiB = 1 << 20
GiB = 1 << 30


class MemoryFitError(NerfmineError):
    """The run's memory estimate exceeds the memory available (the message gives options)."""


@dataclass(frozen=True)
class Split:
    """A split's image count and full-resolution size, read from the image headers."""

    name: str
    count: int
    width: int
    height: int

    def size(self, downscale: int) -> tuple[int, int]:
        return self.width // downscale, self.height // downscale

    def image_bytes(self, downscale: int) -> int:
        w, h = self.size(downscale)
        return self.count * w * h * 4


@dataclass
class MemoryEstimate:
    """Bytes per item on the host and on the device (empty for a CPU run) and what is free."""

    device_type: str
    downscale: int
    images_on_host: bool
    host: dict[str, int] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)
    host_available: int | None = None
    device_available: int | None = None

    @property
    def host_total(self) -> int:
        return sum(self.host.values())

    @property
    def device_total(self) -> int:
        return sum(self.device.values())

    @property
    def host_fits(self) -> bool:
        return self.host_available is None or self.host_total <= HEADROOM * self.host_available

    @property
    def device_fits(self) -> bool:
        return (self.device_available is None
                or self.device_total <= HEADROOM * self.device_available)

    @property
    def fits(self) -> bool:
        return self.host_fits and self.device_fits

    def summary(self) -> str:
        """One line: needed / available per pool."""
        parts = [f"host {_fmt(self.host_total)}" + _of(self.host_available)]
        if self.device_type != "cpu":
            parts.append(f"{self.device_type} {_fmt(self.device_total)}"
                         + _of(self.device_available))
        where = "host" if self.images_on_host or self.device_type == "cpu" else self.device_type
        return (f"memory estimate (downscale {self.downscale}, training images on the {where}): "
                + ", ".join(parts))

    def details(self) -> str:
        lines = []
        pools = [("host", self.host, self.host_total, self.host_available)]
        if self.device_type != "cpu":
            pools.append((self.device_type, self.device, self.device_total,
                          self.device_available))
        for name, items, total, available in pools:
            status = "" if available is None else (
                " (fits)" if total <= HEADROOM * available else " (does NOT fit)")
            lines.append(f"  {name}: needs {_fmt(total)}{_of(available)}{status}")
            for key, value in items.items():
                if value:
                    lines.append(f"    {key}: {_fmt(value)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device_type,
            "downscale": self.downscale,
            "images_on_host": self.images_on_host,
            "host_bytes": dict(self.host),
            "host_total_bytes": self.host_total,
            "host_available_bytes": self.host_available,
            "device_bytes": dict(self.device),
            "device_total_bytes": self.device_total,
            "device_available_bytes": self.device_available,
            "headroom": HEADROOM,
            "fits": self.fits,
        }


def _fmt(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _of(available: int | None) -> str:
    if available is None:
        return " (available memory unknown)"
    return f" of {_fmt(available)} available"


# ------------------------------------------------------------------------------ what is free
def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (torch.cuda.mem_get_info); None for other devices."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


# ------------------------------------------------------------------------------ the estimate
def scan_splits(config: RunConfig, data_root: Path) -> tuple[Split, Split | None, list[str]]:
    """The training and evaluation splits' image counts and sizes, from the image headers.

    A problem with the evaluation split is only noted here (evaluation reports it in full)."""
    from nerfmine.data import load_scene

    d = config.data
    notes: list[str] = []

    def scan(split: str) -> Split:
        data = load_scene(data_root, split, 1, holdout_every=d.holdout_every,
                            skip_missing=d.skip_missing, decode=False,
                            min_sharpness=d.min_sharpness)
        return Split(split, len(data), data.width, data.height)

    train = scan(d.train_split)
    try:
        evaluation = scan(d.eval_split)
    except DataError as exc:
        evaluation = None
        notes.append(f"memory estimate leaves out the evaluation split '{d.eval_split}' ({exc})")
    return train, evaluation, notes


def model_bytes(config: RunConfig) -> dict[str, int]:
    """Device bytes other than the images: parameters and their optimizer state, occupancy
    grid, a step's packed samples and rays, and the activation allowance."""
    m, t, o = config.model, config.train, config.occupancy
    # Cascades: the config's, else from aabb_scale when the config gives it (a capture's own
    # aabb_scale is read with the poses, after this estimate: 1 cascade is assumed then).
    n_cascades = o.cascades or cascades_for_aabb_scale(config.data.aabb_scale or 1.0)
    spec = HashGridSpec(n_levels=m.n_levels, n_features=m.n_features,
                        log2_table_size=m.log2_table_size, base_resolution=m.base_resolution,
                        max_resolution=m.max_resolution)
    table = spec.n_entries * spec.n_features
    hid, geo, sh = m.hidden_dim, m.geo_feature_dim, m.sh_degree**2
    mlp = hid * spec.output_dim + geo * hid + hid * (geo + sh) + hid * hid + 3 * hid
    params = table + mlp
    amp = bool(t.mixed_precision and config.device.startswith("cuda"))
    per_sample = ACTIVATION_BYTES_PER_SAMPLE.get(config.backend, 1280)
    if not amp:
        per_sample = int(per_sample * FP32_ACTIVATION_FACTOR)
    packed = PACKED_SAMPLE_BYTES + (MINING_SAMPLE_BYTES if config.mining == "hsm" else 0)
    return {
        f"hash table ({table:,} fp32) and MLPs ({mlp:,}): weights, gradients, Adam moments, "
        "EMA" + (", fp16 copy" if amp else ""): params * (4 + 4 + 8 + 4 + (2 if amp else 0)),
        f"occupancy grid {o.resolution}^3" + (f" x {n_cascades} cascades" if n_cascades > 1
                                                else ""): n_cascades * o.resolution**3 * 6,
        f"packed samples ({t.target_samples:,} per step) and rays (up to {t.max_rays:,})":
            t.target_samples * packed + t.max_rays * RAY_BYTES,
        f"activations ({per_sample} B per sample, {config.backend} backend)":
            t.target_samples * per_sample,
    }


def estimate(config: RunConfig, train: Split, evaluation: Split | None, downscale: int,
             images_on_host: bool, host_available: int | None,
             device_available: int | None) -> MemoryEstimate:
    """The estimate for a downscale factor and an image placement."""
    device_type = torch.device(config.device).type
    on_cpu = device_type == "cpu"
    w, h = train.size(downscale)
    train_key = f"training images ({train.count} x {w}x{h} RGBA)"
    est = MemoryEstimate(device_type, downscale, images_on_host,
                         host_available=host_available,
                         device_available=None if on_cpu else device_available)
    est.host[train_key] = train.image_bytes(downscale)
    if evaluation is not None:
        ew, eh = evaluation.size(downscale)
        est.host[f"evaluation images ({evaluation.count} x {ew}x{eh} RGBA)"] = (
            evaluation.image_bytes(downscale))
    model = model_bytes(config)
    if on_cpu:
        est.host.update(model)
    else:
        if images_on_host:
            est.host["pinned copy of the training images (while pinning)"] = (
                train.image_bytes(downscale))
        else:
            est.device[train_key] = train.image_bytes(downscale)
        est.device.update(model)
    return est


def fit_memory(config: RunConfig, data_root: Path, notes: list[str] | None = None,
               host_available: int | None = None,
               device_available: int | None = None) -> RunConfig:
    """Estimate the run's memory before loading, act on ``config.data.memory_fit``, and return
    the config (with ``data.memory_estimate`` recorded, and with ``images_on_host`` or
    ``downscale`` changed by "auto"); lines for the run's log are appended to ``notes``.

    ``host_available`` / ``device_available`` override what is measured (tests)."""
    d = config.data
    device = torch.device(config.device)
    if host_available is None:
        host_available = available_host_bytes()
    if device_available is None:
        device_available = available_device_bytes(device)
    notes = [] if notes is None else notes
    train, evaluation, scan_notes = scan_splits(config, data_root)
    notes += scan_notes
    max_downscale = max(1, min(train.width, train.height))
    on_device = device.type != "cpu"

    def est(downscale: int, on_host: bool) -> MemoryEstimate:
        return estimate(config, train, evaluation, downscale, on_host, host_available,
                        device_available)

    current = est(d.downscale, d.images_on_host)
    chosen, action = current, None
    if not current.fits and d.memory_fit != "off":
        host_option = est(d.downscale, True) if on_device and not d.images_on_host else None
        if host_option is not None and not host_option.fits:
            host_option = None
        down_option = _smallest_downscale(est, d.downscale, max_downscale, d.images_on_host)
        down_host_option = (_smallest_downscale(est, d.downscale, max_downscale, True)
                            if on_device and not d.images_on_host else None)
        if down_host_option is not None and down_option is not None and (
                down_host_option.downscale >= down_option.downscale):
            down_host_option = None  # no smaller factor with the images on the host
        if d.memory_fit == "auto":
            pick = host_option or down_option or down_host_option
            if pick is None:
                raise MemoryFitError(_refusal(current, config, None, None, None, auto=True))
            chosen = pick
            what = []
            if pick.images_on_host and not d.images_on_host:
                what.append("images kept on the host (--images-on-host)")
            if pick.downscale != d.downscale:
                w, h = train.size(pick.downscale)
                what.append(f"--downscale {pick.downscale} ({w}x{h} images)")
            action = "auto-fit applied " + " and ".join(what)
            notes.append(f"{action}: the run did not fit ({current.summary()})")
        else:
            raise MemoryFitError(_refusal(current, config, host_option, down_option,
                                          down_host_option, auto=False))
    elif not current.fits:
        action = "does not fit by the estimate; memory check off (--no-memory-check)"
        notes.append(f"{current.summary()}: {action}")

    record = chosen.to_dict()
    record["action"] = action
    if chosen is not current:
        record["before_auto_fit"] = current.to_dict()
    data = dataclasses.replace(d, downscale=chosen.downscale,
                               images_on_host=chosen.images_on_host, memory_estimate=record)
    notes.append(chosen.summary())
    return dataclasses.replace(config, data=data)


def _smallest_downscale(est, start: int, stop: int, on_host: bool) -> MemoryEstimate | None:
    for n in range(start + 1, stop + 1):
        candidate = est(n, on_host)
        if candidate.fits:
            return candidate
    return None


def _refusal(current: MemoryEstimate, config: RunConfig, host_option, down_option,
             down_host_option, auto: bool) -> str:
    lines = [
        "this run will not fit in memory by the estimate made before loading the images "
        f"(at most {HEADROOM:.0%} of the available memory is planned for):",
        current.details(),
    ]
    options = []
    if host_option is not None:
        options.append(
            f"  --images-on-host: keep the training images in host memory (pinned) and copy each "
            f"step's pixels over: {host_option.summary()}")
    if down_option is not None:
        options.append(f"  --downscale {down_option.downscale}: the smallest factor that fits: "
                       f"{down_option.summary()}")
    if down_host_option is not None:
        options.append(f"  --downscale {down_host_option.downscale} --images-on-host: "
                       f"{down_host_option.summary()}")
    if options:
        lines.append("options:")
        lines += options
        lines.append("  --auto-fit: apply the first of these automatically "
                     "(data.memory_fit = \"auto\")")
    else:
        tried = "--downscale" if current.device_type == "cpu" else "--downscale or --images-on-host"
        lines.append(
            f"{'--auto-fit found no' if auto else 'no'} {tried} that makes it fit: the model and "
            "a step's buffers alone are too large. Reduce train.target_samples, train.max_rays "
            "or model.log2_table_size (--config FILE, or --preset cpu), or free memory.")
    lines.append("  --no-memory-check: run anyway (data.memory_fit = \"off\"; the estimate is "
                 "deliberately generous)")
    return "\n".join(lines)
