"""What the subcommands share: the table of training flags (train and bench), the progress bar,
run-folder checks, loading a trained run and the ``run`` of the image and SDF primitives.

:data:`TRAINING_FLAGS` lists every flag that sets a config value, where the value goes and
which commands take it; :func:`add_training_flags` adds them to a subcommand's parser and
:func:`training_overrides` turns the parsed arguments into nested config overrides (on top of
a ``--config`` file, which may use the config layout of older nerfmine versions).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerfmine.errors import NerfmineError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def parse_points(text: str) -> tuple[float, ...]:
    """``--eval-at 15,30,60``: comma-separated numbers."""
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 15,30,60, got '{text}'") from None


def parse_seconds(text: str) -> float:
    """``--seconds 60`` of the image and SDF primitives: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds such as 60, got "
                                         f"'{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got '{text}'")
    return value


def parse_eval_times(text: str) -> tuple[float, ...]:
    """``--eval-at 1,5,15,60`` of the image and SDF primitives: positive seconds of training
    clock, comma-separated, returned sorted without repeats (their order does not matter)."""
    points = parse_points(text)
    if not points:
        raise argparse.ArgumentTypeError(f"expected seconds of training clock such as "
                                         f"1,5,15,60, got '{text}'")
    bad = [p for p in points if not (math.isfinite(p) and p > 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"evaluation times must be positive seconds of "
                                         f"training clock, got {', '.join(f'{p:g}' for p in bad)}")
    return tuple(sorted(set(points)))


def _max_resolution(value: int) -> int:
    if value < 16:
        raise NerfmineError(f"--max-resolution: expected a grid resolution of 16 or more "
                            f"(instant-ngp: 2048), got {value}")
    return value


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets config values.

    ``dest`` is the argparse destination; ``to`` maps its value (when the flag was given: not
    None, not False) to ``{section: {key: value}}`` or ``{top_level_key: value}`` overrides.
    ``group`` names a mutually exclusive group; ``commands`` the subcommands that take it."""

    names: tuple[str, ...]
    options: dict[str, Any]
    to: Callable[[Any], dict[str, Any]]
    commands: frozenset[str] = frozenset({"train", "bench"})
    group: str | None = None
    dest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.dest:
            dest = self.names[0].lstrip("-").replace("-", "_")
            object.__setattr__(self, "dest", self.options.get("dest", dest))


# The presets' finest resolutions (nerfmine.config.PRESETS over ModelConfig's default), stated
# here because importing nerfmine.config imports torch and ``nerfmine --help`` must not;
# tests/test_cli_robustness.py checks that they stay equal.
PRESET_MAX_RESOLUTION = {"gpu": 2048, "cpu": 512}
MAX_RESOLUTION_HELP = (
    "finest hash-grid resolution over the unit cube (default: the preset's: "
    f"{PRESET_MAX_RESOLUTION['gpu']}, instant-ngp's, with --preset gpu and "
    f"{PRESET_MAX_RESOLUTION['cpu']} with --preset cpu; --preset auto is gpu on a CUDA "
    "machine, else cpu; lower it for small images of object-centred scenes, see "
    "BENCHMARKS.md)")
TRAIN_ONLY = frozenset({"train"})

TRAINING_FLAGS: tuple[Flag, ...] = (
    Flag(("data",), dict(nargs="?", default=None,
                         help="scene: a NeRF-synthetic folder, a transforms.json capture (file "
                              "or folder) or a COLMAP folder (default: the bundled 100x100 lego "
                              "demo scene)"),
         lambda v: {"data": {"path": str(Path(v).resolve())}}, TRAIN_ONLY),
    Flag(("--steps",), dict(type=int, help="budget in training steps"),
         lambda v: {"train": {"max_steps": v, "max_seconds": None}}, TRAIN_ONLY, "budget"),
    Flag(("--seconds",), dict(type=float, help="budget in seconds of training clock (default: "
                                               "the preset's; bench: per arm)"),
         lambda v: {"train": {"max_seconds": v, "max_steps": None}}, group="budget"),
    Flag(("--eval-at",), dict(type=parse_points, default=None,
                              help="evaluation points in the budget's unit, e.g. "
                                   "15,30,60,120,240"),
         lambda v: {"train": {"eval_at": list(v)}}),
    Flag(("--mining",), dict(choices=["hsm", "none"], default=None,
                             help="hsm: online hard sample mining (default); none: plain "
                                  "Instant-NGP"),
         lambda v: {"mining": v}, TRAIN_ONLY),
    Flag(("--backend",), dict(choices=["auto", "torch", "triton"], default=None,
                              help="kernels: triton on a CUDA GPU, torch (pure PyTorch) "
                                   "elsewhere"),
         lambda v: {"backend": v}),
    Flag(("--downscale",), dict(type=int, default=None, help="shrink images N times"),
         lambda v: {"data": {"downscale": v}}),
    Flag(("--min-sharpness",), dict(type=float, default=None, metavar="S",
                                    help="drop the frames of a transforms.json whose "
                                         "'sharpness' is below S (blurry photos), before the "
                                         "hold-out"),
         lambda v: {"data": {"min_sharpness": v}}),
    Flag(("--skip-missing",), dict(action="store_true",
                                   help="train on the frames whose images exist when a "
                                        "transforms.json names missing ones"),
         lambda v: {"data": {"skip_missing": True}}),
    Flag(("--images-on-host",), dict(action="store_true",
                                     help="keep the training images in host memory (pinned on "
                                          "a GPU) and copy each step's pixels to the device: "
                                          "frees their GPU memory"),
         lambda v: {"data": {"images_on_host": True}}),
    # Train only: bench's arms must share their settings, and the estimate differs by arm.
    Flag(("--auto-fit",), dict(action="store_true",
                               help="when the memory estimate made before loading says the "
                                    "run will not fit, apply --images-on-host or the smallest "
                                    "--downscale that fits (default: stop and list the "
                                    "options)"),
         lambda v: {"data": {"memory_fit": "auto"}}, TRAIN_ONLY, group="fit"),
    Flag(("--no-memory-check",), dict(action="store_true",
                                      help="run even when the memory estimate says it will "
                                           "not fit"),
         lambda v: {"data": {"memory_fit": "off"}}, group="fit"),
    Flag(("--seed",), dict(type=int, default=None, help="seed of every random draw"),
         lambda v: {"train": {"seed": v}}),
    Flag(("--max-resolution",), dict(type=int, default=None, metavar="N",
                                     help=MAX_RESOLUTION_HELP),
         lambda v: {"model": {"max_resolution": _max_resolution(v)}}),
    Flag(("--eval-images",), dict(type=int, default=None,
                                  help="evaluate only the first N images of the evaluation "
                                       "split"),
         lambda v: {"eval": {"max_images": v}}),
    Flag(("--no-cuda-graphs",), dict(action="store_true",
                                     help="launch each step's kernels one by one instead of "
                                          "replaying a captured CUDA graph (for profiling and "
                                          "debugging)"),
         lambda v: {"train": {"cuda_graphs": False}}),
)


def add_training_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the :data:`TRAINING_FLAGS` that ``command`` takes, plus ``--preset``, ``--config``
    and ``--quiet``."""
    groups: dict[str, Any] = {}
    for flag in TRAINING_FLAGS:
        if command not in flag.commands:
            continue
        target = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_mutually_exclusive_group()
            target = groups[flag.group]
        target.add_argument(*flag.names, **flag.options)
    parser.add_argument("--preset", default="auto", help="auto (default), gpu or cpu")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON file of config overrides (nested like config.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def read_config_file(path: Path) -> dict[str, Any]:
    """The overrides of a ``--config`` file, in today's layout (an older layout is upgraded
    and a note says what moved)."""
    from nerfmine.config import upgrade_layout

    try:
        overrides = json.loads(path.read_text())
    except OSError as exc:
        raise NerfmineError(f"{path}: cannot read the config file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise NerfmineError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(overrides, dict) or any(
            not isinstance(v, dict) for k, v in overrides.items()
            if k not in ("preset", "backend", "device", "mining", "config_version")):
        raise NerfmineError(f"{path}: expected a JSON object of config sections like "
                            '{"optim": {"lr": 0.01}}, as in a run\'s config.json')
    overrides, moved = upgrade_layout(overrides, where=str(path))
    if moved:
        print(f"note: {path} uses the config layout of nerfmine 0.1; read as: "
              f"{', '.join(moved)}", flush=True)
    return overrides


def training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the training flags the command has (and its ``--config``)."""
    from nerfmine.config import merge_overrides

    config_file = getattr(args, "config", None)
    overrides: dict[str, Any] = read_config_file(config_file) if config_file else {}
    for flag in TRAINING_FLAGS:
        value = getattr(args, flag.dest, None)
        if value is None or value is False:
            continue
        overrides = merge_overrides(overrides, flag.to(value))
    return overrides


# --------------------------------------------------------------------------- run folders
def default_run_dir(data: str | None) -> Path:
    name = Path(data).name if data else "demo-lego_100"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".nerfmine-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise NerfmineError(f"{folder}: cannot write the run folder here ({exc.strerror}); "
                            "choose another place with --output") from None


def add_fit_arguments(parser: argparse.ArgumentParser, source: str, presets: dict[str, Any],
                      preset_help: str, mining_choices: tuple[str, ...],
                      mining_help: str) -> None:
    """The arguments every single-task primitive takes first, in ``--help``'s order: the file
    to fit (``source``: "image", "mesh"), ``-o``, ``--resume``, ``--preset``, ``--mining``,
    ``--backend``, ``--device``, ``--steps``, ``--seconds`` and ``--eval-at``. The command adds
    its own after them."""
    from nerfmine.fit_config import BACKEND_CHOICES

    parser.add_argument(source, type=Path, nargs="?", default=None,
                        help=f"the {source} to fit (with --resume: only if it moved)")
    parser.add_argument("--output", "-o", type=Path, default=None, metavar="RUN_DIR",
                        help="run folder to write (required unless --resume)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its checkpoint")
    parser.add_argument("--preset", choices=sorted(presets), default=None, help=preset_help)
    parser.add_argument("--mining", choices=mining_choices, default=None, help=mining_help)
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                        help="hash grid and Adam backend (auto: triton on CUDA, torch on CPU)")
    parser.add_argument("--device", default=None, help="cuda, cpu or auto (default)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps in all (with --seconds: an upper bound, none "
                             "unless given)")
    parser.add_argument("--seconds", type=parse_seconds, default=None, metavar="S",
                        help="time budget: stop after S seconds of training clock (the steps "
                             "only; evaluations and outputs are off the clock)")
    parser.add_argument("--eval-at", type=parse_eval_times, default=None, metavar="T1,T2,...",
                        help="evaluate at these seconds of training clock, e.g. 1,5,15,60 "
                             "(instead of every --eval-every steps); each point records the "
                             "clock it was taken at")


def run_fit(args: argparse.Namespace, fit_class: Any, make_config: Callable[..., Any],
            source: Path | None, flags: tuple[str, ...], *, usage: str,
            size: Callable[[Any], str], metric: Callable[[float], str],
            outputs: Callable[[dict[str, Any]], str],
            note: Callable[[Any], str] = lambda fit: "") -> int:
    """``run`` of a single-task primitive (``nerfmine image``, ``nerfmine sdf``): start the fit
    of ``source`` in ``-o RUN_DIR`` (the preset: ``--preset``, else gpu on a CUDA device and cpu
    elsewhere) or continue ``--resume RUN_DIR``, train with a line per evaluation point unless
    ``--quiet``, and say what came out.

    ``fit_class`` is a :class:`~nerfmine.fit_loop.FitLoop` (imported by the caller, inside its
    ``run``, so that building the parser needs no torch); ``flags`` are the argparse
    destinations that become config overrides when given; ``usage`` is the message when the
    source or the run folder is missing. The messages' parts: ``size(fit)`` (what is fitted,
    e.g. "64x48"), ``note(fit)`` (after the start line), ``metric(value)`` (e.g. "PSNR 25.00
    dB") and ``outputs(metrics)`` (the files after metrics.json)."""
    from nerfmine.fit_config import lift_step_limit
    from nerfmine.fit_loop import resolve_device

    overrides = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    overrides = lift_step_limit(overrides)
    if args.resume is not None:
        if args.output is not None or args.preset is not None:
            raise NerfmineError("-o and --preset do not apply with --resume: the run continues "
                                "in its own folder with its own config")
        fit = fit_class.resume(args.resume, overrides, source)
        print(f"resuming {args.resume} at step {fit.step} ({fit.clock:.1f} s of training "
              "clock)", flush=True)
    else:
        if source is None or args.output is None:
            raise NerfmineError(usage)
        preset = args.preset
        if preset is None:
            preset = "gpu" if resolve_device(overrides.get("device", "auto")).type == "cuda" \
                else "cpu"
        config = make_config(preset, overrides)
        check_writable(args.output)
        fit = fit_class.create(config, source, args.output)
        print(f"fitting {source} ({size(fit)}) on {fit.device} (preset {config.preset}, "
              f"backend {fit.backend}, mining {config.mining}) into {args.output}{note(fit)}",
              flush=True)

    def progress(point: dict) -> None:
        if not args.quiet:
            due = point.get("eval_at")
            at = f" (point {', '.join(f'{p:g}' for p in due)} s)" if due else ""
            print(f"step {point['step']}: {metric(point[fit.METRIC])} at "
                  f"{point['clock']:.2f} s{at}", flush=True)

    metrics = fit.train(progress=progress)
    print(f"done: {metrics['steps']} steps in {metrics['training_seconds']:.1f} s "
          f"({metrics['steps_per_second']:.1f} steps/s) on {metrics['device']}; "
          f"{metric(metrics[fit.METRIC])}")
    print(f"outputs in {fit.run_dir}: config.json, checkpoint.pt, metrics.json, "
          f"{outputs(metrics)}")
    return 0


def load_scene(run_dir: Path, data: Path | None = None, overrides: dict | None = None):
    """A run's :class:`~nerfmine.scene.TrainedScene`; ``data`` replaces the scene folder its
    config records (the scene moved since training)."""
    from nerfmine.config import merge_overrides
    from nerfmine.errors import ConfigError
    from nerfmine.scene import TrainedScene

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise ConfigError(f"{run_dir} is a file; pass the run folder that 'nerfmine train' "
                          "wrote (it holds checkpoint.pt). A scene file that TrainedScene.save "
                          "wrote loads in Python with nerfmine.scene.TrainedScene.load.")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; pass the folder a 'nerfmine train' "
                          "wrote (it holds checkpoint.pt).")
    changes = dict(overrides or {})
    if data:
        changes = merge_overrides(changes, {"data": {"path": str(Path(data).resolve())}})
    return TrainedScene.load(run_dir, changes or None)


def check_scene_exists(data_root: Path, run_dir: Path) -> None:
    """A run's scene must still be where it was trained (or be given with --data)."""
    if not Path(data_root).exists():
        raise NerfmineError(
            f"{data_root}: the scene {run_dir} was trained on is not there any more (it is "
            "read for the cameras and photographs); pass its new location with --data PATH.")


def parse_background(text: str) -> tuple[float, float, float]:
    """``--background``: white, black or r,g,b with each value in [0, 1]."""
    t = str(text).strip().lower()
    if t == "white":
        return (1.0, 1.0, 1.0)
    if t == "black":
        return (0.0, 0.0, 0.0)
    try:
        values = tuple(float(v) for v in t.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise NerfmineError(f"--background: expected white, black or r,g,b with three numbers "
                            f"in [0, 1] (e.g. 0.5,0.5,0.5), got '{text}'.")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- progress
class Progress:
    """A rich progress bar: step, loss, samples/s, PSNR so far, time left (``quiet``: one
    line per evaluation instead)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._eval_task = None
        self._eval_start = self._eval_said = time.monotonic()
        if quiet:
            return
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), transient=False)
        self.task = self.bar.add_task("", total=1.0)
        self.bar.start()

    def __call__(self, info: dict[str, Any]) -> None:
        event = info.get("event")
        if event == "eval_progress":
            self._eval_progress(info["done"], info["total"], info["step"])
            return
        if self.quiet:
            if event == "eval":
                print(f"eval at {info['clock']:.1f} s, step {info['step']}: "
                      f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}", flush=True)
            return
        if event == "eval":
            self.bar.console.print(f"eval at {info['clock']:.1f} s (step {info['step']}): "
                                   f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}")
            return
        psnr = f"{info['psnr']:.2f} dB" if info.get("psnr") is not None else "-"
        hard = f" b/B {info['hard_fraction']:.2f}" if info.get("hard_fraction") is not None else ""
        desc = (f"step {info['step']} loss {info['loss']:.5f} "
                f"{info['samples_per_second'] / 1e6:.2f} M samples/s PSNR {psnr}{hard} "
                f"left {info['time_left']:.0f} s")
        self.bar.update(self.task, completed=min(1.0, info["fraction"]), description=desc)

    def _eval_progress(self, done: int, total: int, step: int) -> None:
        """An evaluation's images done: a second bar, or (quiet) a line when one takes long,
        so that a slow evaluation (a young field on a CPU) never looks like a hang."""
        if self.quiet:
            now = time.monotonic()
            if done == 0:
                self._eval_start = self._eval_said = now
            elif done < total and now - self._eval_said > 30.0:
                self._eval_said = now
                print(f"evaluating at step {step}: {done}/{total} images "
                      f"({now - self._eval_start:.0f} s)", flush=True)
            return
        if done == 0:
            self._eval_task = self.bar.add_task(f"evaluating at step {step}", total=total)
        if self._eval_task is not None:
            self.bar.update(self._eval_task, completed=done,
                            description=f"evaluating at step {step}: {done}/{total} images")
            if done >= total:
                self.bar.remove_task(self._eval_task)
                self._eval_task = None

    def close(self) -> None:
        if not self.quiet:
            self.bar.stop()


# --------------------------------------------------------------------------- several processes
def launch_ranks(processes: int, argv: list[str], what: str, after_failure: str) -> int:
    """Run ``nerfmine ARGV`` as ``processes`` ranks through torchrun's Python entry point
    (``train --gpus``, ``sweep --processes``); a rank that fails (torchrun then stops the
    others) becomes a NerfmineError naming ``what`` stopped and ``after_failure``."""
    from torch.distributed import run as torchrun

    print(f"{what}: starting {processes} processes through torchrun", flush=True)
    try:
        torchrun.main(["--standalone", "--nproc_per_node", str(processes), "-m", "nerfmine",
                       *argv])
    except Exception as exc:  # noqa: BLE001 - torchrun's ChildFailedError and kin
        raise NerfmineError(f"a {what} process stopped ({type(exc).__name__}; its message is "
                            f"above); {after_failure}") from None
    return 0
