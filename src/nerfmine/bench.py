"""Side-by-side benchmark: the plain Instant-NGP baseline against hard sample mining.

``nerfmine bench DATA`` trains each arm (same scene, seed, backend and every other setting) one
after the other on the same machine, following ../shared/docs/benchmark-protocol.md, and writes
``bench.json`` (every arm's curve, steps, memory and mean b/B, plus the comparisons) and plots of
test PSNR against training time and against steps. Arms can also be run in separate commands
(``--arms hsm``) and combined afterwards with ``--merge``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from nerfmine.errors import NerfmineError
from nerfmine.plots import plot_psnr_curve
from nerfmine.run_folder import atomic_write_text

ARMS = ("none", "hsm")

MIN_COMPARABLE_STEPS = 100
"""Fewest training steps an arm must run for the bench's comparison to mean something.

With a time budget, a slow machine (a loaded CPU, a first run compiling its kernels) may give
an arm only a handful of steps: its PSNR is then that of a barely trained field, set by the
start-up cost and the noise of the first steps rather than by how the arm samples. The mining
arm needs the most: its ``tau_bar`` is an EMA with decay 0.99
(:attr:`nerfmine.miner.MinerConfig.tau_ema`), a time constant of 100 steps, and until it
settles the hard batch is still the initial one. Below this many steps
:func:`few_steps_warnings` puts a warning in the report and the printed summary instead of
letting the figures read as a result."""


def run_arm(arm: str, overrides: dict[str, Any], preset: str, out_dir: Path,
            progress=None, warm_steps: int = 0) -> dict[str, Any]:
    """Train one arm into ``out_dir/arm``; returns its metrics.

    ``warm_steps`` > 0 first trains a throwaway run of that many steps with the same settings
    (in a temporary folder), so that the timed run's clock starts with every kernel compiled
    and cached: the protocol's "warm" figure. Without it the first arm of a fresh machine pays
    for compiling the kernels the arms share and a later arm does not (the "cold" figure).
    """
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    values = json.loads(json.dumps(overrides))
    values["mining"] = arm
    config = make_config(preset, values)
    run_dir = out_dir / arm
    if (run_dir / "checkpoint.pt").exists():
        raise NerfmineError(f"{run_dir} already holds a run; choose another --output")
    if warm_steps > 0:
        warm = merge_overrides(values, {"train": {"max_steps": warm_steps, "eval_at": ()},
                                        "eval": {"max_images": 1, "save_renders": False}})
        warm["train"].pop("max_seconds", None)
        with tempfile.TemporaryDirectory(prefix=f"nerfmine-warm-{arm}-") as tmp:
            Trainer(make_config(preset, warm), Path(tmp)).train()
    trainer = Trainer(config, run_dir)
    metrics = trainer.train(progress=progress)
    metrics["run_dir"] = str(run_dir)
    metrics["kernel_cache"] = (f"warm ({warm_steps} steps of this arm trained first)"
                               if warm_steps > 0 else "cold unless an earlier run filled it")
    return metrics


def _psnr_at(curve: list[dict[str, Any]], clock: float, key: str = "psnr") -> float | None:
    """PSNR (or another figure of the curve, ``key``) of the last evaluation at or before
    ``clock`` (within 1% of it)."""
    points = [p for p in curve if p["clock"] <= clock * 1.01]
    return points[-1].get(key) if points else None


def compare(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures the mining claim is judged by, where both arms are present."""
    if not {"none", "hsm"} <= set(arms):
        return {}
    base, mine = arms["none"], arms["hsm"]
    base_final = base["curve"][-1]
    reach = next((p for p in mine["curve"] if p["psnr"] >= base_final["psnr"]), None)
    out: dict[str, Any] = {
        "baseline_final": {"clock": base_final["clock"], "psnr": base_final["psnr"]},
        "mining_first_reaches_baseline_final_at": (
            {"clock": reach["clock"], "step": reach["step"], "psnr": reach["psnr"]}
            if reach else None),
        "psnr_gain_at": {},
    }
    for point in sorted({round(p["clock"]) for p in mine["curve"]}):
        a, b = _psnr_at(mine["curve"], point), _psnr_at(base["curve"], point)
        if a is not None and b is not None:
            out["psnr_gain_at"][str(point)] = a - b
    mem_a, mem_b = mine.get("peak_gpu_memory"), base.get("peak_gpu_memory")
    if isinstance(mem_a, dict) and isinstance(mem_b, dict):
        out["training_increment_ratio"] = (
            mem_a["training_increment_bytes"] / max(1, mem_b["training_increment_bytes"]))
        out["total_peak_ratio"] = mem_a["total_peak_bytes"] / max(1, mem_b["total_peak_bytes"])
    out["steps"] = {"none": base["steps"], "hsm": mine["steps"]}
    out["mean_hard_fraction"] = mine.get("mean_hard_fraction")
    return out


def few_steps_warnings(runs: dict[str, dict[str, Any]],
                       min_steps: int = MIN_COMPARABLE_STEPS) -> list[str]:
    """One warning per run (``runs`` maps a label such as an arm's name to its metrics) that
    trained fewer than ``min_steps`` steps: its figures say little about its arm (see
    :data:`MIN_COMPARABLE_STEPS`)."""
    warnings = []
    for label, metrics in runs.items():
        steps = metrics.get("steps") if isinstance(metrics, dict) else None
        if isinstance(steps, bool) or not isinstance(steps, (int, float)):
            continue
        if steps < min_steps:
            warnings.append(
                f"{label} ran only {int(steps)} training step{'' if steps == 1 else 's'} "
                f"(fewer than {min_steps}): its PSNR is that of a barely trained field, and "
                "comparisons with it are not meaningful; give a larger --seconds budget (or "
                "a faster machine, or --warm-steps so that its clock does not pay for "
                "compiling).")
    return warnings


def print_warnings(warnings: list[str], log=print) -> None:
    """Print each warning as a ``WARNING:`` line."""
    for warning in warnings:
        log(f"WARNING: {warning}")


def write_report(arms: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"arms": arms, "comparison": compare(arms),
              "warnings": few_steps_warnings({f"arm mining={a}": m for a, m in arms.items()})}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    curves = {f"mining {name}": m["curve"] for name, m in arms.items()}
    first, *rest = curves.items()
    for x, name in (("clock", "bench_psnr_time.png"), ("step", "bench_psnr_steps.png")):
        plot_psnr_curve(first[1], out_dir / name, title=first[0], others=dict(rest), x=x)
    return report


def merge(files: list[Path], out_dir: Path) -> dict[str, Any]:
    """Combine metrics.json files (or bench.json files) of separately run arms, or the
    bench.json files of several-scene or several-seed benches run in separate commands (a
    seed per command, say): those give one report over all their scenes and seeds."""
    arms: dict[str, dict[str, Any]] = {}
    suites: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise NerfmineError(f"{path}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise NerfmineError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("runs"), dict):
            suites.append((path, data))
        elif isinstance(data, dict) and isinstance(data.get("arms"), dict):
            arms.update(data["arms"])
        elif isinstance(data, dict) and data.get("mining") in ARMS and "curve" in data:
            arms[data["mining"]] = data
        else:
            raise NerfmineError(f"{path}: expected a run's metrics.json or a bench.json")
    if suites and arms:
        raise NerfmineError("--merge: give either bench.json files of several scenes or seeds, "
                            "or the metrics.json / bench.json files of one comparison, not both")
    if suites:
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        came_from: dict[tuple[str, str, str], Path] = {}
        for path, suite in suites:
            for scene, seed, arm, metrics in _suite_runs(path, suite):
                key = (scene, seed, arm)
                if key in came_from:
                    raise NerfmineError(
                        f"--merge: {came_from[key]} and {path} both hold scene '{scene}', seed "
                        f"{seed}, arm mining={arm}; a seed's arms are compared as a pair, so "
                        "each must come from one file (leave one of them out)")
                came_from[key] = path
                runs.setdefault(scene, {}).setdefault(seed, {})[arm] = metrics
        return write_suite_report(runs, out_dir)
    return write_report(arms, out_dir)


def _suite_runs(path: Path, suite: dict[str, Any]):
    """(scene, seed, arm, metrics) of a several-seed bench.json, each checked for what the
    report reads; a malformed file is a NerfmineError naming the file and the entry."""
    for scene, by_seed in suite["runs"].items():
        if not isinstance(by_seed, dict):
            raise NerfmineError(f"{path}: runs.{scene} must map seeds to arms")
        for seed, by_arm in by_seed.items():
            where = f"{path}: runs.{scene}.{seed}"
            try:
                int(seed)
            except ValueError:
                raise NerfmineError(f"{where}: a seed must be a whole number") from None
            if not isinstance(by_arm, dict):
                raise NerfmineError(f"{where} must map arms (none, hsm) to a run's metrics")
            for arm, metrics in by_arm.items():
                if arm not in ARMS or not isinstance(metrics, dict) or not isinstance(
                        metrics.get("curve"), list) or "psnr" not in metrics:
                    raise NerfmineError(f"{where}.{arm}: expected an arm (none, hsm) with a "
                                        "run's metrics (psnr and curve); the file is not a "
                                        "bench.json of nerfmine bench")
                yield scene, str(seed), arm, metrics


# --------------------------------------------------------------------------- several scenes, seeds
def scene_name(path: str | None) -> str:
    """A short name for a scene path (its folder's name; the demo's for None)."""
    if not path:
        return "demo"
    p = Path(path)
    return p.parent.name if p.suffix == ".json" else p.name


def _spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarise(runs: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Per scene and arm, the mean, min and max over seeds of the PSNR at each evaluation point
    and at the end, steps per second and the training increment; per scene the paired gains of
    mining (mining minus the baseline of the same seed) and whether mining reached the
    baseline's final PSNR within half the budget. ``runs[scene][seed][arm]`` is a run's
    metrics."""
    out: dict[str, Any] = {}
    for scene, seeds in runs.items():
        arms: dict[str, Any] = {}
        for arm in ARMS:
            metrics = [s[arm] for s in seeds.values() if arm in s]
            if not metrics:
                continue
            points = sorted({round(p["clock"]) for m in metrics for p in m["curve"]})
            mem = [m["peak_gpu_memory"]["training_increment_bytes"] for m in metrics
                   if isinstance(m.get("peak_gpu_memory"), dict)]
            arms[arm] = {
                "psnr_at": {str(t): _spread([_psnr_at(m["curve"], t) for m in metrics])
                            for t in points},
                "ssim_at": {str(t): _spread([_psnr_at(m["curve"], t, "ssim") for m in metrics])
                            for t in points},
                "final_psnr": _spread([m["psnr"] for m in metrics]),
                "steps_per_second": _spread([m["steps_per_second"] for m in metrics]),
                "training_increment_bytes": _spread(mem),
                "mean_hard_fraction": _spread([m.get("mean_hard_fraction") for m in metrics]),
            }
        gains: dict[str, list[float]] = {}
        ratios: list[float] = []
        reached, budget = [], None
        for pair in seeds.values():
            if not {"none", "hsm"} <= set(pair):
                continue
            comparison = compare(pair)
            for t, gain in comparison["psnr_gain_at"].items():
                gains.setdefault(t, []).append(gain)
            if "training_increment_ratio" in comparison:
                ratios.append(comparison["training_increment_ratio"])
            budget = max(p["clock"] for p in pair["none"]["curve"])
            reach = comparison["mining_first_reaches_baseline_final_at"]
            reached.append(reach is not None and reach["clock"] <= 0.5 * budget * 1.01)
        out[scene] = {"arms": arms,
                      "mining_gain_at": {t: _spread(v) for t, v in gains.items()},
                      "training_increment_ratio": _spread(ratios),
                      "mining_reaches_baseline_final_within_half_budget": reached}
    return out


def table(summary: dict[str, Any]) -> str:
    """A Markdown table of :func:`summarise`: mean (min .. max) per scene, arm and point; the
    ``hsm - none`` row gives mining's paired PSNR gain and its training-memory increment as a
    fraction of the baseline's."""
    lines = ["| scene | arm | " + " | ".join(["PSNR at t (s): mean (min .. max)",
                                               "SSIM at t (s)", "final PSNR", "steps/s", "b/B",
                                               "increment ratio"]) + " |",
             "|---|---|---|---|---|---|---|---|"]

    def fmt(s, digits=2):
        return "-" if s is None else (f"{s['mean']:.{digits}f} ({s['min']:.{digits}f} .. "
                                      f"{s['max']:.{digits}f})")

    for scene, entry in summary.items():
        for arm, a in entry["arms"].items():
            at = "; ".join(f"{t}: {fmt(s)}" for t, s in a["psnr_at"].items())
            ssim = "; ".join(f"{t}: {fmt(s, 4)}" for t, s in a.get("ssim_at", {}).items())
            lines.append(f"| {scene} | {arm} | {at} | {ssim} | {fmt(a['final_psnr'])} | "
                         f"{fmt(a['steps_per_second'], 0)} | {fmt(a['mean_hard_fraction'])} | |")
        gains = "; ".join(f"{t}: {fmt(s)}" for t, s in entry["mining_gain_at"].items())
        if gains:
            ratio = fmt(entry.get("training_increment_ratio"))
            lines.append(f"| {scene} | hsm - none | {gains} | | | | | {ratio} |")
    return "\n".join(lines) + "\n"


def run_suite(scenes: list[str | None], seeds: list[int], arms: list[str],
              overrides: dict[str, Any], preset: str, out_dir: Path, progress_factory=None,
              warm_steps: int = 0, log=print) -> dict[str, Any]:
    """Every arm of every scene and seed, one after the other, into
    ``out_dir/<scene>/seed<k>/<arm>``; writes ``bench.json`` (every run's metrics and
    :func:`summarise`) and ``bench_table.md``. Returns the report."""
    from nerfmine.config import merge_overrides
    from nerfmine.data.files import resolve_data_path

    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for scene in scenes:
        name = scene_name(scene)
        if name in runs:
            raise NerfmineError(f"two scenes are both named '{name}'; give distinct folders")
        runs[name] = {}
        for seed in seeds:
            values = merge_overrides(overrides, {"train": {"seed": seed}})
            if scene:
                values = merge_overrides(values, {"data": {"path": str(resolve_data_path(scene))}})
            folder = out_dir / name / f"seed{seed}"
            runs[name][str(seed)] = {}
            for arm in arms:
                log(f"bench: {name}, seed {seed}, mining={arm} into {folder / arm}")
                progress = progress_factory() if progress_factory else None
                try:
                    metrics = run_arm(arm, values, preset, folder, progress, warm_steps)
                finally:
                    if progress is not None and hasattr(progress, "close"):
                        progress.close()
                runs[name][str(seed)][arm] = metrics
                log(f"bench: {name}, seed {seed}, mining={arm}: PSNR {metrics['psnr']:.2f} dB "
                    f"after {metrics['steps']} steps")
                write_suite_report(runs, out_dir)  # after every run: a killed suite keeps it
    return write_suite_report(runs, out_dir)


def write_suite_report(runs: dict[str, dict[str, dict[str, Any]]],
                       out_dir: Path) -> dict[str, Any]:
    """``bench.json`` (every run's metrics, :func:`summarise` and warnings) and
    ``bench_table.md`` of a several-scene or several-seed bench; returns the report."""
    summary = summarise(runs)
    warnings = few_steps_warnings({f"{name}, seed {seed}, arm mining={arm}": metrics
                                   for name, by_seed in runs.items()
                                   for seed, by_arm in by_seed.items()
                                   for arm, metrics in by_arm.items()})
    seeds = sorted({int(seed) for by_seed in runs.values() for seed in by_seed})
    arms = [a for a in ARMS if any(a in by_arm for by_seed in runs.values()
                                   for by_arm in by_seed.values())]
    report = {"scenes": list(runs), "seeds": seeds, "arms": arms,
              "runs": runs, "summary": summary, "warnings": warnings}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "bench.json", json.dumps(report, indent=2) + "\n")
    text = table(summary)
    if warnings:
        text += "\n" + "".join(f"- **Warning:** {w}\n" for w in warnings)
    atomic_write_text(out_dir / "bench_table.md", text)
    return report
