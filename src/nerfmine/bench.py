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

ARMS = ("none", "hsm")


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


def _psnr_at(curve: list[dict[str, Any]], clock: float) -> float | None:
    """PSNR of the last evaluation at or before ``clock`` (within 1% of it)."""
    points = [p for p in curve if p["clock"] <= clock * 1.01]
    return points[-1]["psnr"] if points else None


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


def write_report(arms: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"arms": arms, "comparison": compare(arms)}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    curves = {f"mining {name}": m["curve"] for name, m in arms.items()}
    first, *rest = curves.items()
    for x, name in (("clock", "bench_psnr_time.png"), ("step", "bench_psnr_steps.png")):
        plot_psnr_curve(first[1], out_dir / name, title=first[0], others=dict(rest), x=x)
    return report


def merge(files: list[Path], out_dir: Path) -> dict[str, Any]:
    """Combine metrics.json files (or bench.json files) of separately run arms."""
    arms: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise NerfmineError(f"{path}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise NerfmineError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("arms"), dict):
            arms.update(data["arms"])
        elif isinstance(data, dict) and data.get("mining") in ARMS and "curve" in data:
            arms[data["mining"]] = data
        else:
            raise NerfmineError(f"{path}: expected a run's metrics.json or a bench.json")
    return write_report(arms, out_dir)
