"""Quality against training time of the image and SDF primitives, mining on and off (issue 17):
PSNR of images and IoU of meshes at given seconds of training clock, with the step time, the
table size and the memory, on a CUDA GPU (``--preset cpu`` on a CPU for a smoke run).

For each image (``--images``) and mesh (``--meshes``), each seed (``--seeds``) and each arm
(``--arms``, mining values, one arm after the other so that they run side by side on the same
machine), in one process:

1. build the library's fit (:class:`~nerfmine.image.fit.ImageFit`,
   :class:`~nerfmine.sdf.fit.SdfFit`) with the time budget ``--seconds`` and the evaluation
   times ``--eval-at`` (the step budget lifted: the clock alone ends the run), its run folder
   under ``--work`` (default: a temporary folder, removed at the end);
2. warm it up (:meth:`FitLoop.warm_up`: ``--warmup-steps`` steps compile the kernels and fill
   the memory pools, then the fit is put back as it was), so that the clock measures warm
   steps; the warm-up's seconds are recorded (the compilation, for the first run of a kernel);
3. train it (:meth:`FitLoop.train`: the clock counts the steps only; the metric is evaluated at
   each ``--eval-at`` point, recorded with the clock it was actually taken at) and let it write
   its folder (crops.png for an image, mesh_vs_truth.png for a mesh, the curve), whose figures
   are copied beside ``--out``;
4. time ``--timing-steps`` more steps one by one: the median step time with CUDA events on a GPU
   (the host clock on a CPU), and the peak memory over those steps (evaluations excluded,
   benchmark-protocol.md's "Memory"); the run's peak, evaluations included, is recorded too.

Writes one JSON (``--out``, rewritten after every run, so that a command stopped by a time limit
keeps its finished runs) with the GPU, the commit, the versions and a record per run, and
prints a markdown table per primitive: rows file x arm (the mean over seeds, min-max beside it
when there are several), columns the metric at each time, the step time and the table size.

    PYTHONPATH=src python3 benchmarks/primitives.py --images .devdata/prims/albert.exr \\
        --seconds 60 --eval-at 1,5,15,60 --seeds 0 --out benchmarks/results/prims_albert.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PRIMITIVES = {
    # primitive: (metric, samples-per-step setting, its unit, figures the run folder writes)
    "image": ("psnr", "pixels_per_step", "pixels", ("crops.png", "psnr_curve.png")),
    "sdf": ("iou", "samples_per_step", "points", ("mesh_vs_truth.png", "iou_curve.png")),
}


def _fit_class_and_config(primitive: str):
    if primitive == "image":
        from nerfmine.image.config import make_config
        from nerfmine.image.fit import ImageFit

        return ImageFit, make_config
    from nerfmine.sdf.config import make_config
    from nerfmine.sdf.fit import SdfFit

    return SdfFit, make_config


def make_run_config(primitive: str, arm: str, seed: int, args: argparse.Namespace) -> Any:
    """The fit's config: the preset under the user's overrides, the arm, the seed and the time
    budget (steps lifted by :func:`nerfmine.fit_config.lift_step_limit`)."""
    from nerfmine.fit_config import lift_step_limit

    _, make_config = _fit_class_and_config(primitive)
    overrides = {**(args.image_overrides if primitive == "image" else args.sdf_overrides),
                 "mining": arm, "seed": seed, "device": args.device, "seconds": args.seconds,
                 "eval_at": args.eval_at}
    return make_config(args.preset, lift_step_limit(overrides))


def time_steps(fit: Any, steps: int) -> dict[str, Any]:
    """``steps`` more training steps of a trained fit, one by one: the median and mean step
    time in ms (CUDA events around each step on a GPU, the host clock on a CPU), the wall time
    per step, and on a GPU the peak memory over these steps and the memory before them."""
    cuda = fit.device.type == "cuda"
    out: dict[str, Any] = {"timed_steps": steps,
                           "timing": "CUDA events" if cuda else "host clock"}
    if cuda:
        torch.cuda.synchronize(fit.device)
        out["allocated_before_timing_bytes"] = torch.cuda.memory_allocated(fit.device)
        torch.cuda.reset_peak_memory_stats(fit.device)
    marks, step_ms = [], []
    wall = time.perf_counter()
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fit.train_step()
            end.record()
            marks.append((start, end))
        else:
            begin = time.perf_counter()
            fit.train_step()
            step_ms.append((time.perf_counter() - begin) * 1e3)
    if cuda:
        torch.cuda.synchronize(fit.device)
        step_ms = [start.elapsed_time(end) for start, end in marks]
        out["peak_bytes_timed_steps"] = torch.cuda.max_memory_allocated(fit.device)
    out["wall_ms_per_step"] = (time.perf_counter() - wall) * 1e3 / max(steps, 1)
    out["median_step_ms"] = statistics.median(step_ms) if step_ms else None
    out["mean_step_ms"] = statistics.fmean(step_ms) if step_ms else None
    return out


def eval_points(curve: list[dict[str, Any]], eval_at: tuple[float, ...],
                metric: str) -> list[dict[str, Any]]:
    """The metric at each requested time: the curve point that stands for it (its actual clock
    and step), or None values for a point the run never reached (its step budget ended it)."""
    points = []
    for at in eval_at:
        hit = next((p for p in curve if at in p.get("eval_at", ())), None)
        points.append({"at": at, "clock": hit["clock"] if hit else None,
                       "step": hit["step"] if hit else None,
                       metric: hit[metric] if hit else None})
    return points


def run_one(primitive: str, path: Path, arm: str, seed: int, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    """One fit from its construction to its timed steps; its record (see the module docstring)."""
    fit_class, _ = _fit_class_and_config(primitive)
    metric, per_step_key, unit, figures = PRIMITIVES[primitive]
    config = make_run_config(primitive, arm, seed, args)
    run_dir = work / f"{primitive}_{path.stem}_{arm}_s{seed}"
    started = time.perf_counter()
    fit = fit_class.create(config, path, run_dir)
    setup_seconds = time.perf_counter() - started
    warmup_seconds = fit.warm_up(args.warmup_steps)
    cuda = fit.device.type == "cuda"
    memory: dict[str, Any] = {}
    if cuda:
        torch.cuda.synchronize(fit.device)
        memory["setup_bytes"] = torch.cuda.memory_allocated(fit.device)
        torch.cuda.reset_peak_memory_stats(fit.device)
    before_train = time.perf_counter()
    metrics = fit.train()
    train_wall = time.perf_counter() - before_train
    if cuda:
        memory["peak_bytes_run"] = torch.cuda.max_memory_allocated(fit.device)
    before_timing = time.perf_counter()
    timing = time_steps(fit, args.timing_steps)
    if cuda:
        memory["peak_bytes_steps"] = timing.pop("peak_bytes_timed_steps")
        memory["training_increment_bytes"] = memory["peak_bytes_steps"] - memory["setup_bytes"]
    timing_seconds = time.perf_counter() - before_timing
    copied = {}
    for name in figures:
        source = run_dir / name
        if source.is_file() and not args.no_figures:
            target = args.out.parent / f"{args.out.stem}_{path.stem}_{arm}_s{seed}_{name}"
            shutil.copyfile(source, target)
            copied[name] = target.name
    size = (f"{fit.width}x{fit.height}" if primitive == "image"
            else f"{fit.mesh.faces.shape[0]} triangles")
    return {
        "primitive": primitive,
        "file": str(path),
        "name": path.name,
        "size": size,
        "arm": arm,
        "seed": seed,
        "metric": metric,
        "log2_table_size": config.log2_table_size,
        "table_entries": int(fit.field.table.shape[0]),
        "samples_per_step": getattr(config, per_step_key),
        "samples_unit": unit,
        "points": eval_points(metrics["curve"], config.eval_at, metric),
        "final": metrics[metric],
        "steps": metrics["steps"],
        "training_seconds": metrics["training_seconds"],
        "steps_per_second": metrics["steps_per_second"],
        "stopped_by": "seconds" if metrics["training_seconds"] >= config.seconds else "steps",
        "mean_hard_fraction": metrics["mean_hard_fraction"],
        **timing,
        **memory,
        "ground_truth_seconds": getattr(fit, "ground_truth_seconds", None),
        "seconds": {
            "setup": setup_seconds,
            "warm_up": warmup_seconds,
            "train_call": train_wall,
            "evaluations_and_outputs": train_wall - metrics["training_seconds"],
            "timing": timing_seconds,
            "total": time.perf_counter() - started,
        },
        "figures": copied,
        "run_dir": str(run_dir),
        "config": config.to_dict(),
    }


def _cell(values: list[float | None], digits: int) -> str:
    """The mean of a cell's seeds, with min-max when there are several; "-" when a seed never
    reached the point."""
    if not values or any(v is None for v in values):
        return "-"
    text = f"{statistics.fmean(values):.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def markdown_tables(runs: list[dict[str, Any]], eval_at: tuple[float, ...]) -> str:
    """One table per primitive: rows file x arm, the metric at each time, steps, step ms."""
    tables = []
    for primitive, (metric, _, _, _) in PRIMITIVES.items():
        rows = [r for r in runs if r["primitive"] == primitive]
        if not rows:
            continue
        digits = 2 if metric == "psnr" else 4
        label = "PSNR dB" if metric == "psnr" else "IoU"
        head = (["file", "arm", "seeds"] + [f"{label} @{at:g} s" for at in eval_at]
                + ["steps", "step ms", "log2 T", "per step"])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault((r["name"], r["arm"]), []).append(r)
        for (name, arm), group in groups.items():
            cells = [name, arm, ",".join(str(r["seed"]) for r in group)]
            for i in range(len(eval_at)):
                cells.append(_cell([r["points"][i][metric] for r in group], digits))
            cells += [_cell([r["steps"] for r in group], 0),
                      _cell([r["median_step_ms"] for r in group], 3),
                      str(group[0]["log2_table_size"]),
                      f"{group[0]['samples_per_step']} {group[0]['samples_unit']}"]
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _versions() -> dict[str, str | None]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from nerfmine.cli.common import parse_eval_times, parse_seconds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, nargs="+", default=[], metavar="IMAGE")
    parser.add_argument("--meshes", type=Path, nargs="+", default=[], metavar="MESH")
    parser.add_argument("--seconds", type=parse_seconds, required=True,
                        help="time budget per run, seconds of training clock")
    parser.add_argument("--eval-at", type=parse_eval_times, default=None,
                        help="evaluation times, e.g. 1,5,15,60 (default: the budget)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--arms", default="none,hsm",
                        help="mining values, run one after the other (default none,hsm; sdf "
                             "also takes hsm-error)")
    parser.add_argument("--preset", default="auto",
                        help="auto (gpu on a CUDA machine, else cpu), gpu or cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-overrides", type=json.loads, default={}, metavar="JSON",
                        help='ImageConfig settings for every image run, e.g. '
                             '\'{"log2_table_size": 24}\'')
    parser.add_argument("--sdf-overrides", type=json.loads, default={}, metavar="JSON",
                        help="SdfConfig settings for every mesh run")
    parser.add_argument("--warmup-steps", type=int, default=20,
                        help="steps before each run's clock starts, undone (default 20)")
    parser.add_argument("--timing-steps", type=int, default=200,
                        help="steps timed one by one after each run (default 200)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the run folders (default: a temporary one, removed)")
    parser.add_argument("--no-figures", action="store_true",
                        help="do not copy the runs' figures beside --out")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    args = parser.parse_args(argv)
    if not args.images and not args.meshes:
        parser.error("give at least one --images or --meshes file")
    missing = [str(p) for p in [*args.images, *args.meshes] if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.seeds or not args.arms:
        parser.error("--seeds and --arms need at least one value each")
    if args.warmup_steps < 0 or args.timing_steps < 1:
        parser.error("--warmup-steps must be >= 0 and --timing-steps >= 1")
    args.eval_at = args.eval_at or (args.seconds,)
    if args.preset == "auto":
        from nerfmine.fit_loop import resolve_device

        args.preset = "gpu" if resolve_device(args.device).type == "cuda" else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from nerfmine.errors import NerfmineError
    from nerfmine.fit_loop import resolve_device
    from nerfmine.provenance import device_name, git_commit

    jobs = [("image", p) for p in args.images] + [("sdf", p) for p in args.meshes]
    try:  # every setting is checked before the first run starts
        for primitive in {p for p, _ in jobs}:
            for arm in args.arms:
                make_run_config(primitive, arm, args.seeds[0], args)
    except NerfmineError as exc:
        print(f"primitives.py: {exc}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device": device_name(device),
        "commit": git_commit(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **_versions(),
        "argv": sys.argv[1:] if argv is None else argv,
        "preset": args.preset,
        "seconds": args.seconds,
        "eval_at": list(args.eval_at),
        "warmup_steps": args.warmup_steps,
        "clock": "training steps only (evaluations, checkpoints and outputs excluded), warm: "
                 "each run's kernels compiled by its undone warm-up steps",
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.work is None:
        scratch = tempfile.TemporaryDirectory(prefix="nerfmine-primitives-")
        work = Path(scratch.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    try:
        for primitive, path in jobs:
            for seed in args.seeds:
                for arm in args.arms:
                    record = run_one(primitive, path, arm, seed, args, work)
                    results["runs"].append(record)
                    args.out.write_text(json.dumps(results, indent=2) + "\n")
                    gc.collect()  # the fit's tensors go before the next run's setup
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    shown = ", ".join(f"{p['at']:g} s: {_value(p[record['metric']])}"
                                      for p in record["points"])
                    print(f"{record['name']} {arm} seed {seed}: {shown}; {record['steps']} "
                          f"steps, {record['median_step_ms']:.3f} ms/step, "
                          f"{record['seconds']['total']:.0f} s in all", flush=True)
    finally:
        if scratch is not None:
            scratch.cleanup()
    print(f"\n{results['gpu']}, commit {results['commit']}, {args.seconds:g} s per run\n")
    print(markdown_tables(results["runs"], args.eval_at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
