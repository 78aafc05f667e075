"""Many training runs at once: ``nerfmine sweep SWEEP.json -o OUT``, one process per GPU.

The processes are started by PyTorch's own launcher (``torchrun``, or ``nerfmine sweep
--processes N``, which calls it): each one is a rank, trains the runs ``i`` with
``i % world_size == rank`` one after the other on its own GPU (``LOCAL_RANK``; on a machine
without CUDA each rank is a CPU process), and writes each run into ``OUT/<name>/`` as ``nerfmine
train`` would. When every rank is done (a barrier over the gloo backend, which needs no GPU),
rank 0 writes ``OUT/sweep.json`` (every run's settings, status and metrics) and
``OUT/sweep_table.md``.

A run that fails with a user-facing error (a missing scene, a bad setting) gets
``OUT/<name>/failed.json`` with the message and the rank goes on with its next run; the table
says which failed and why. Started again on the same ``OUT``, a sweep skips the runs that
finished (``metrics.json``), resumes those that stopped (``checkpoint.pt``), and retries the
failed ones; ``--table-only`` rebuilds the table from what is on disk (after a killed rank,
for example: torchrun stops every rank when one dies, before rank 0 writes the table).

SWEEP.json is either a list of runs::

    {"preset": "auto", "config": {...common overrides...},
     "runs": [{"name": "fox-hsm", "data": "data/fox", "config": {"mining": "hsm"}}, ...]}

or a cross product, expanded to runs named ``<scene>-<arm>-seed<k>``::

    {"scenes": ["data/fox", "data/bird360"], "arms": ["none", "hsm"], "seeds": [0, 1, 2],
     "config": {"train": {"max_seconds": 60}}}

``config`` objects are nested like ``config.json`` (``--config`` of ``train``); a run's
``config`` is merged over the common one, and ``data`` sets ``data.path``. Relative paths are
resolved against SWEEP.json's folder.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerfmine.errors import ConfigError, NerfmineError, TrainingInterrupted
from nerfmine.run_folder import atomic_write_text

ARMS = ("none", "hsm")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its folder name, scene (None: the bundled demo) and overrides."""

    name: str
    data: str | None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    preset: str
    runs: tuple[SweepRun, ...]


def load_sweep(path: Path) -> Sweep:
    """Read and check SWEEP.json (see the module docstring); every problem is a
    :class:`ConfigError` naming the file and the field."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the sweep file ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected an object with 'runs' (a list of runs) or "
                          "'scenes' (a cross product of scenes, arms and seeds)")
    known = {"preset", "config", "runs", "scenes", "arms", "seeds"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; a sweep file has "
                          f"{', '.join(sorted(known))}")
    preset = spec.get("preset", "auto")
    if not isinstance(preset, str):
        raise ConfigError(f"{path}: 'preset' must be a string such as \"auto\", got {preset!r}")
    common = _object(spec.get("config", {}), path, "config")
    root = path.resolve().parent
    if ("runs" in spec) == ("scenes" in spec):
        raise ConfigError(f"{path}: give exactly one of 'runs' (a list of runs) and 'scenes' "
                          "(a cross product with 'arms' and 'seeds')")
    if "runs" in spec:
        runs = _listed_runs(spec["runs"], path, root, common)
    else:
        runs = _cross_product(spec, path, root, common)
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{path}: run names must differ (each is a folder): "
                          f"{', '.join(twice)} appear more than once")
    if not runs:
        raise ConfigError(f"{path}: the sweep has no runs")
    return Sweep(preset, tuple(runs))


def _object(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{where}' must be an object of config sections like "
                          f'{{"train": {{"max_seconds": 60}}}}, got {value!r}')
    return value


def _data(value: Any, path: Path, root: Path, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: '{where}' must be a scene path (a string), got {value!r}")
    return str((root / Path(value).expanduser()).resolve())


def _listed_runs(runs: Any, path: Path, root: Path, common: dict) -> list[SweepRun]:
    from nerfmine.config import merge_overrides

    if not isinstance(runs, list):
        raise ConfigError(f"{path}: 'runs' must be a list of objects with 'name', 'data' and "
                          f"'config', got {type(runs).__name__}")
    out = []
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict) or not isinstance(run.get("name"), str):
            raise ConfigError(f"{path}: {where} must be an object with a 'name' (a string)")
        unknown = sorted(set(run) - {"name", "data", "config"})
        if unknown:
            raise ConfigError(f"{path}: {where} has unknown field(s) {', '.join(unknown)}; a "
                              "run has name, data and config")
        name = run["name"]
        if not _NAME.match(name):
            raise ConfigError(f"{path}: {where}.name '{name}' is not a folder name (letters, "
                              "digits, '.', '_' and '-', not starting with '.', '_' or '-')")
        config = merge_overrides(common, _object(run.get("config", {}), path,
                                                 f"{where}.config"))
        out.append(SweepRun(name, _data(run.get("data"), path, root, f"{where}.data"),
                            config))
    return out


def _cross_product(spec: dict, path: Path, root: Path, common: dict) -> list[SweepRun]:
    from nerfmine.config import merge_overrides

    scenes, arms, seeds = spec["scenes"], spec.get("arms", list(ARMS)), spec.get("seeds", [0])
    if not isinstance(scenes, list) or not scenes:
        raise ConfigError(f"{path}: 'scenes' must be a non-empty list of scene paths")
    if not isinstance(arms, list) or not arms or any(a not in ARMS for a in arms):
        raise ConfigError(f"{path}: 'arms' must be a list of {' and '.join(ARMS)}, got {arms!r}")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise ConfigError(f"{path}: 'seeds' must be a list of whole numbers, got {seeds!r}")
    out = []
    for i, scene in enumerate(scenes):
        data = _data(scene, path, root, f"scenes[{i}]")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(data).name if data else "demo")
        for arm in arms:
            for seed in seeds:
                config = merge_overrides(common, {"mining": arm, "train": {"seed": seed}})
                out.append(SweepRun(f"{stem}-{arm}-seed{seed}", data, config))
    return out


# --------------------------------------------------------------------------- running
def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def run_share(sweep: Sweep, out_dir: Path, rank: int, world: int, log: Callable = print,
              progress_factory: Callable | None = None) -> list[str]:
    """Train this rank's runs (``i % world == rank``) one after the other; returns their
    statuses ("done", "skipped", "failed")."""
    statuses = []
    for i, run in enumerate(sweep.runs):
        if i % world != rank:
            continue
        statuses.append(run_one(run, sweep.preset, out_dir, rank, log, progress_factory))
    return statuses


def run_one(run: SweepRun, preset: str, out_dir: Path, rank: int, log: Callable = print,
            progress_factory: Callable | None = None) -> str:
    """Train ``run`` into ``out_dir/<name>``: skip it when it finished, resume it when it
    stopped, record a user-facing failure in ``failed.json`` and go on."""
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    run_dir = out_dir / run.name
    failed = run_dir / "failed.json"
    if (run_dir / "metrics.json").is_file():
        log(f"sweep: rank {rank}: {run.name} finished before; skipped")
        return "skipped"
    failed.unlink(missing_ok=True)
    progress = progress_factory() if progress_factory else None
    try:
        if (run_dir / "checkpoint.pt").is_file():
            log(f"sweep: rank {rank}: resuming {run.name}")
            trainer = Trainer.resume(run_dir)
        else:
            overrides = run.config
            if run.data is not None:
                overrides = merge_overrides(overrides, {"data": {"path": run.data}})
            log(f"sweep: rank {rank}: training {run.name}")
            trainer = Trainer(make_config(preset, overrides), run_dir)
        metrics = trainer.train(progress=progress)
    except TrainingInterrupted:
        raise
    except NerfmineError as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(failed, json.dumps({"name": run.name, "rank": rank,
                                              "error": str(exc)}, indent=2) + "\n")
        log(f"sweep: rank {rank}: {run.name} failed: {exc}")
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a bug in one run must not cost the others
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(failed, json.dumps({
            "name": run.name, "rank": rank, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()}, indent=2) + "\n")
        log(f"sweep: rank {rank}: {run.name} failed: {type(exc).__name__}: {exc}")
        return "failed"
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    log(f"sweep: rank {rank}: {run.name}: PSNR {metrics['psnr']:.2f} dB after "
        f"{metrics['steps']} steps")
    return "done"


# --------------------------------------------------------------------------- the table
def write_table(sweep: Sweep, out_dir: Path) -> dict[str, Any]:
    """``sweep.json`` and ``sweep_table.md`` from the run folders; returns the report."""
    rows = []
    for run in sweep.runs:
        run_dir = out_dir / run.name
        row: dict[str, Any] = {"name": run.name, "data": run.data, "config": run.config}
        metrics_file, failed_file = run_dir / "metrics.json", run_dir / "failed.json"
        if metrics_file.is_file():
            row["status"] = "done"
            row["metrics"] = json.loads(metrics_file.read_text())
        elif failed_file.is_file():
            row["status"] = "failed"
            row["error"] = json.loads(failed_file.read_text()).get("error")
        elif (run_dir / "checkpoint.pt").is_file():
            row["status"] = "stopped (run the sweep again to resume it)"
        else:
            row["status"] = "not started"
        rows.append(row)
    report = {"preset": sweep.preset, "runs": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "sweep.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "sweep_table.md", table(rows))
    return report


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: per run its status, scene, mining, seed, PSNR at each evaluation
    point, final PSNR and SSIM, steps and steps per second."""
    lines = ["| run | status | scene | mining | seed | PSNR at t | PSNR | SSIM | steps | "
             "steps/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row.get("metrics")
        if m is None:
            status = row["status"] + (f": {row['error']}" if row.get("error") else "")
            lines.append(f"| {row['name']} | {status.replace('|', '/')} | "
                         + " | ".join([Path(row["data"]).name if row["data"] else "demo"]
                                      + ["-"] * 7) + " |")
            continue
        unit = "s" if m.get("budget", {}).get("max_seconds") else ""
        points = "; ".join(f"{p['clock'] if unit else p['step']:.0f}{unit}: {p['psnr']:.2f}"
                           for p in m.get("curve", []))
        seed = row["config"].get("train", {}).get("seed", "-")
        lines.append(f"| {row['name']} | done | {Path(m['scene']).name} | {m['mining']} | {seed} "
                     f"| {points} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['steps']} | "
                     f"{m['steps_per_second']:.1f} |")
    return "\n".join(lines) + "\n"
