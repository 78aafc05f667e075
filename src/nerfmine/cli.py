"""The ``nerfmine`` command: train and evaluate Instant-NGP NeRFs with hard sample mining."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from nerfmine.errors import NerfmineError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parse_points(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 15,30,60, got '{text}'") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nerfmine",
        description="Train Instant-NGP NeRFs with online hard sample mining.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a scene (the bundled demo scene by default)")
    train.add_argument("data", nargs="?", default=None,
                       help="scene folder in the NeRF-synthetic transforms format "
                            "(default: the bundled 100x100 lego demo scene)")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="budget in training steps")
    budget.add_argument("--seconds", type=float, help="budget in seconds of training clock")
    train.add_argument("--eval-at", type=_parse_points, default=None,
                       help="evaluation points in the budget's unit, e.g. 15,30,60,120,240")
    train.add_argument("--preset", default="auto", help="auto (default), gpu or cpu")
    train.add_argument("--mining", choices=["hsm", "none"], default=None,
                       help="hsm: online hard sample mining (default); none: plain Instant-NGP")
    train.add_argument("--backend", choices=["auto", "torch", "triton"], default=None,
                       help="kernels: triton on a CUDA GPU, torch (pure PyTorch) elsewhere")
    train.add_argument("--downscale", type=int, default=None, help="shrink images N times")
    train.add_argument("--min-sharpness", type=float, default=None, metavar="S",
                       help="drop the frames of a transforms.json whose 'sharpness' is below S "
                            "(blurry photos), before the hold-out")
    train.add_argument("--skip-missing", action="store_true",
                       help="train on the frames whose images exist when a transforms.json "
                            "names missing ones")
    train.add_argument("--images-on-host", action="store_true",
                       help="keep the training images in host memory (pinned on a GPU) and copy "
                            "each step's pixels to the device: frees their GPU memory")
    fit = train.add_mutually_exclusive_group()
    fit.add_argument("--auto-fit", action="store_true",
                     help="when the memory estimate made before loading says the run will not "
                          "fit, apply --images-on-host or the smallest --downscale that fits "
                          "(default: stop and list the options)")
    fit.add_argument("--no-memory-check", action="store_true",
                     help="run even when the memory estimate says it will not fit")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--max-resolution", type=int, default=None, metavar="N",
                       help=MAX_RESOLUTION_HELP)
    train.add_argument("--eval-images", type=int, default=None,
                       help="evaluate only the first N images of the evaluation split")
    train.add_argument("--output", "-o", type=Path, default=None,
                       help="run folder (default: runs/<scene>-<date>-<time>)")
    train.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                       help="continue a run from its last checkpoint (the budget and "
                            "evaluation points may change)")
    train.add_argument("--config", type=Path, default=None,
                       help="JSON file of config overrides (nested like config.json)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--no-cuda-graphs", action="store_true",
                       help="launch each step's kernels one by one instead of replaying a "
                            "captured CUDA graph (for profiling and debugging)")
    train.add_argument("--view", action="store_true",
                       help="serve the web viewer while training (needs viser: pip install "
                            "'nerfmine[view]'); it keeps serving after training until Ctrl-C")
    from nerfmine import viewer as _viewer

    _viewer.add_server_args(train, prefix="view-")

    bench = sub.add_parser(
        "bench", help="train the baseline (--mining none) and hard sample mining side by side")
    bench.add_argument("data", nargs="?", default=None, help="scene folder (default: demo)")
    bench.add_argument("--seconds", type=float, default=None,
                       help="budget per arm in seconds of training clock (default: preset's)")
    bench.add_argument("--eval-at", type=_parse_points, default=None)
    bench.add_argument("--arms", default="none,hsm", help="comma-separated: none, hsm")
    bench.add_argument("--preset", default="auto")
    bench.add_argument("--backend", choices=["auto", "torch", "triton"], default=None)
    bench.add_argument("--seed", type=int, default=None)
    bench.add_argument("--max-resolution", type=int, default=None, metavar="N",
                       help=MAX_RESOLUTION_HELP)
    bench.add_argument("--eval-images", type=int, default=None)
    bench.add_argument("--output", "-o", type=Path, default=Path("runs/bench"))
    bench.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                       help="combine metrics.json / bench.json files of arms run separately")
    bench.add_argument("--quiet", action="store_true")
    bench.add_argument("--no-cuda-graphs", action="store_true",
                       help="launch each step's kernels one by one (no CUDA graphs)")
    bench.add_argument("--warm-steps", type=int, default=0, metavar="N",
                       help="before each arm, train a throwaway run of N steps, so that its "
                            "clock starts with the kernels compiled (the protocol's warm "
                            "figure; default 0: cold)")

    from nerfmine import export_cli, render_cli

    render_cli.add_parser(sub)
    export_cli.add_parser(sub)
    _viewer.add_parser(sub)

    ev = sub.add_parser("eval", help="re-evaluate a run's checkpoint")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--split", default=None, help="split to evaluate (default: the run's)")
    ev.add_argument("--data", type=Path, default=None,
                    help="scene folder, if it moved since training")
    ev.add_argument("--eval-images", type=int, default=None)
    ev.add_argument("--no-renders", action="store_true", help="do not write the renders")
    ev.add_argument("--side-by-side", action="store_true",
                    help="also write renders/<split>/<name>_vs_photo.png: each render (left) "
                         "next to its photograph over white (right)")
    return parser


MAX_RESOLUTION_HELP = ("finest hash-grid resolution over the unit cube (default: "
                       "instant-ngp's 2048; lower it for small images of object-centred "
                       "scenes, see BENCHMARKS.md)")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags a subcommand has (train and bench share them)."""
    overrides: dict[str, Any] = {"data": {}, "train": {}}
    for name in ("config", "data", "downscale", "steps", "seconds", "eval_at", "seed",
                 "eval_images", "mining", "backend"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if args.config is not None:
        try:
            overrides = json.loads(args.config.read_text())
        except OSError as exc:
            raise NerfmineError(f"{args.config}: cannot read the config file ({exc})") from None
        except json.JSONDecodeError as exc:
            raise NerfmineError(f"{args.config}: not valid JSON ({exc})") from None
        if not isinstance(overrides, dict) or any(
                not isinstance(overrides.get(k, {}), dict) for k in ("data", "train")):
            raise NerfmineError(f"{args.config}: expected a JSON object of config sections like "
                                '{"train": {"lr": 0.01}}, as in a run\'s config.json')
        overrides.setdefault("data", {})
        overrides.setdefault("train", {})
    if args.data is not None:
        overrides["data"]["path"] = str(Path(args.data).resolve())
    if args.downscale is not None:
        overrides["data"]["downscale"] = args.downscale
    if getattr(args, "skip_missing", False):
        overrides["data"]["skip_missing"] = True
    if getattr(args, "min_sharpness", None) is not None:
        overrides["data"]["min_sharpness"] = args.min_sharpness
    if getattr(args, "images_on_host", False):
        overrides["data"]["images_on_host"] = True
    if getattr(args, "auto_fit", False):
        overrides["data"]["memory_fit"] = "auto"
    if getattr(args, "no_memory_check", False):
        overrides["data"]["memory_fit"] = "off"
    if args.steps is not None:
        overrides["train"].update(max_steps=args.steps, max_seconds=None)
    if args.seconds is not None:
        overrides["train"].update(max_seconds=args.seconds, max_steps=None)
    if args.eval_at is not None:
        overrides["train"]["eval_at"] = list(args.eval_at)
    if args.seed is not None:
        overrides["train"]["seed"] = args.seed
    if args.eval_images is not None:
        overrides["train"]["eval_max_images"] = args.eval_images
    if getattr(args, "max_resolution", None) is not None:
        if args.max_resolution < 16:
            raise NerfmineError(f"--max-resolution: expected a grid resolution of 16 or more "
                                f"(instant-ngp: 2048), got {args.max_resolution}")
        overrides.setdefault("model", {})["max_resolution"] = args.max_resolution
    if args.mining is not None:
        overrides["mining"] = args.mining
    if args.backend is not None:
        overrides["backend"] = args.backend
    if getattr(args, "no_cuda_graphs", False):
        overrides["train"]["cuda_graphs"] = False
    return overrides


def _default_run_dir(data: str | None) -> Path:
    name = Path(data).name if data else "demo-lego_100"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".nerfmine-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise NerfmineError(f"{folder}: cannot write the run folder here ({exc.strerror}); "
                            "choose another place with --output") from None


class _Progress:
    """A rich progress bar: step, loss, samples/s, PSNR so far, time left."""

    def __init__(self, total: float, unit: str, quiet: bool):
        self.quiet = quiet
        self.unit = unit
        if quiet:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), transient=False)
        self.task = self.bar.add_task("", total=1.0)
        self.bar.start()

    def __call__(self, info: dict[str, Any]) -> None:
        if self.quiet:
            if info.get("event") == "eval":
                print(f"eval at {info['clock']:.1f} s, step {info['step']}: "
                      f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}", flush=True)
            return
        if info.get("event") == "eval":
            self.bar.console.print(f"eval at {info['clock']:.1f} s (step {info['step']}): "
                                   f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.4f}")
            return
        psnr = f"{info['psnr']:.2f} dB" if info.get("psnr") is not None else "-"
        hard = f" b/B {info['hard_fraction']:.2f}" if info.get("hard_fraction") is not None else ""
        desc = (f"step {info['step']} loss {info['loss']:.5f} "
                f"{info['samples_per_second'] / 1e6:.2f} M samples/s PSNR {psnr}{hard} "
                f"left {info['time_left']:.0f} s")
        self.bar.update(self.task, completed=min(1.0, info["fraction"]), description=desc)

    def close(self) -> None:
        if not self.quiet:
            self.bar.stop()


def cmd_train(args: argparse.Namespace) -> int:
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    overrides = _train_overrides(args)
    if args.view:  # fail before loading anything if the viewer cannot start
        from nerfmine import viewer as _viewer

        _viewer.import_viser()
        _viewer.check_port(args.view_host, args.view_port)
    if args.resume is not None:
        # Only what the user typed overrides the checkpoint's config; the budget and the
        # evaluation points may change, anything else must match (checked by resume).
        if args.output is not None or args.preset != "auto":
            raise NerfmineError("--output and --preset do not apply with --resume: the run "
                                "continues in its own folder with its own config")
        if overrides.get("backend") == "auto":
            del overrides["backend"]
        resume_over = {k: v for k, v in overrides.items() if k not in ("data", "train")}
        resume_over["train"] = overrides["train"]
        if overrides["data"]:
            resume_over["data"] = overrides["data"]
        trainer = Trainer.resume(args.resume, resume_over)
        for note in trainer.notes:
            print(f"note: {note}", flush=True)
        print(f"resuming {args.resume} at step {trainer.step} "
              f"({trainer.clock:.1f} s of training clock)", flush=True)
    else:
        preset = args.preset
        config = make_config(preset, overrides)
        run_dir = args.output or _default_run_dir(config.data.path)
        _check_writable(run_dir)
        if (run_dir / "checkpoint.pt").exists():
            raise NerfmineError(f"{run_dir} already holds a run; resume it with "
                                f"--resume {run_dir} or choose another --output")
        trainer = Trainer(config, run_dir)
        for note in trainer.notes:
            print(f"note: {note}", flush=True)
        print(f"training {trainer.data_root} on {config.device} (preset {config.preset}, "
              f"backend {config.backend}, mining {config.mining}) into {run_dir}", flush=True)
    t = trainer.config.train
    unit = "s" if t.max_seconds else "steps"
    progress = _Progress(t.max_seconds or t.max_steps, unit, args.quiet or not sys.stdout.isatty())
    if not args.view:
        try:
            metrics = trainer.train(progress=progress)
        finally:
            progress.close()
        _print_summary(trainer.run_dir, metrics)
        return 0
    return _train_with_viewer(args, trainer, progress)


def _train_with_viewer(args: argparse.Namespace, trainer, progress: _Progress) -> int:
    """Train with the web viewer in background threads; serve on after training until Ctrl-C."""
    from nerfmine import viewer as _viewer

    viewer = _viewer.make_viewer(trainer, host=args.view_host, port=args.view_port,
                                 training=True)
    viewer.start()
    try:
        print(viewer.banner(), flush=True)

        def both(info: dict[str, Any]) -> None:
            progress(info)
            viewer.on_progress(info)

        try:
            metrics = trainer.train(progress=both)
        finally:
            progress.close()
        viewer.set_status(state="training done")
        _print_summary(trainer.run_dir, metrics)
        print(f"viewer: still serving {viewer.url}; Ctrl-C stops it", flush=True)
        _viewer.wait_for_interrupt(viewer)
    finally:
        viewer.stop()
    print("viewer stopped", flush=True)
    return 0


def _print_summary(run_dir: Path, metrics: dict[str, Any]) -> None:
    hard = metrics.get("mean_hard_fraction")
    print(f"done: {metrics['steps']} steps in {metrics['training_seconds']:.1f} s of training "
          f"clock on {metrics['device']}" + (f", mean b/B {hard:.3f}" if hard else ""))
    print(f"test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
          f"({len(metrics['per_image'])} {metrics['split']} views over white)")
    print(f"outputs in {run_dir}: config.json, checkpoint.pt, metrics.json, psnr_curve.png, "
          f"renders/")


def cmd_bench(args: argparse.Namespace) -> int:
    from nerfmine.bench import ARMS, merge, run_arm, write_report

    if args.merge:
        report = merge(args.merge, args.output)
    else:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        bad = [a for a in arms if a not in ARMS]
        if bad:
            raise NerfmineError(f"--arms: unknown arm(s) {', '.join(bad)}; choose from none, hsm")
        overrides = _train_overrides(args)
        _check_writable(args.output)
        results = {}
        for arm in arms:
            print(f"bench: training arm mining={arm} into {args.output / arm}", flush=True)
            progress = _Progress(1.0, "s", args.quiet or not sys.stdout.isatty())
            try:
                results[arm] = run_arm(arm, overrides, args.preset, args.output, progress,
                                       warm_steps=args.warm_steps)
            finally:
                progress.close()
            print(f"bench: mining={arm}: PSNR {results[arm]['psnr']:.2f} dB after "
                  f"{results[arm]['steps']} steps", flush=True)
        report = write_report(results, args.output)
    print(json.dumps(report["comparison"], indent=2))
    print(f"written: {args.output / 'bench.json'}, bench_psnr_time.png, bench_psnr_steps.png")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from nerfmine.trainer import Trainer

    def update(values: dict[str, Any]) -> None:
        if args.split:
            values["data"]["eval_split"] = args.split
        if args.data:
            values["data"]["path"] = str(args.data.resolve())
        if args.eval_images is not None:
            values["train"]["eval_max_images"] = args.eval_images

    if args.side_by_side and args.no_renders:
        raise NerfmineError("--side-by-side writes renders next to their photographs; it cannot "
                            "be combined with --no-renders (drop one of them)")
    trainer = Trainer.from_run_dir(args.run_dir, update)
    run_dir, config = args.run_dir, trainer.config
    split = config.data.eval_split
    save_dir = None if args.no_renders else run_dir / "renders" / split
    from nerfmine.render_cli import check_scene_exists

    check_scene_exists(trainer.data_root, run_dir)
    result = trainer.evaluate(save_dir=save_dir)
    if args.side_by_side:
        from nerfmine.render_cli import write_side_by_side

        pairs = write_side_by_side(save_dir, trainer.eval_data,
                                   [r["name"] for r in result.per_image])
        print(f"wrote {len(pairs)} render/photograph pairs to {save_dir} (*_vs_photo.png)")
    out = {"split": split, "psnr": result.psnr, "ssim": result.ssim, "step": result.step,
           "clock": result.clock, "per_image": result.per_image}
    path = run_dir / f"eval_{split}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{split}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f} over "
          f"{len(result.per_image)} views (step {result.step}); written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "render":
            from nerfmine import render_cli

            return render_cli.run(args)
        if args.command == "export":
            from nerfmine import export_cli

            return export_cli.run(args)
        if args.command == "view":
            from nerfmine import viewer

            return viewer.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NerfmineError as exc:
        from nerfmine.trainer import TrainingInterrupted

        print(f"nerfmine: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, TrainingInterrupted) else EXIT_USER_ERROR
    return 1


if __name__ == "__main__":
    sys.exit(main())
