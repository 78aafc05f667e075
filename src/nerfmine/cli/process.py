"""``nerfmine process``: a phone video or a folder of photos -> a scene folder that ``nerfmine
train`` reads (COLMAP model, images, transforms.json, cameras.png, process.json).

The work is :mod:`nerfmine.process`; this module parses the flags and draws the progress.
Building the parser imports neither numpy nor pycolmap nor torch.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from nerfmine.errors import ConfigError

# nerfmine.process's values, repeated so that building the parser imports nothing heavy;
# tests/test_process.py checks that they stay equal.
DEFAULT_FRAMES = 150
MATCHERS = ("auto", "sequential", "exhaustive")
CAMERA_MODELS = ("auto", "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV",
                 "OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``process`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser(
        "process", help="make a trainable scene from a phone video or a folder of photos",
        description="Make a scene from a video (the sharpest frame of each of --frames equal "
                    "time windows) or a folder of photos (EXIF orientation applied): structure "
                    "from motion with pycolmap (pip install 'nerfmine[process]'), then a "
                    "COLMAP model (sparse/0), images/, images_2|4|8/, an instant-ngp "
                    "transforms.json, cameras.png (check it before training) and process.json.")
    p.add_argument("input", type=Path, nargs="?", default=None,
                   help="video file or folder of photos (with --skip-sfm: the scene folder, "
                        "when -o is not given)")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="scene folder to write (must be empty or absent unless --overwrite)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"video: frames to keep, the sharpest of each equal time window "
                        f"(default {DEFAULT_FRAMES})")
    p.add_argument("--max-size", type=int, default=None, metavar="PIXELS",
                   help="shrink the stored images so their long side is at most PIXELS "
                        "(default: keep their size)")
    p.add_argument("--matcher", choices=MATCHERS, default="auto",
                   help="feature matching: sequential (video frames in order), exhaustive "
                        "(every pair; small photo sets); auto picks sequential for a video and "
                        "for more than 100 photos, else exhaustive")
    p.add_argument("--camera-model", type=str.upper, choices=[m.upper() for m in CAMERA_MODELS],
                   default="AUTO", metavar="MODEL",
                   help="COLMAP camera model: auto (OPENCV, one shared camera, for a video; "
                        "SIMPLE_RADIAL for photos) or one of "
                        f"{', '.join(CAMERA_MODELS[1:])}")
    p.add_argument("--no-downscaled", action="store_true",
                   help="do not write the images_2/, images_4/, images_8/ copies")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the scene folder if it exists (only once the new one is done)")
    p.add_argument("--skip-sfm", action="store_true",
                   help="reuse the scene folder's COLMAP model: rewrite only transforms.json, "
                        "cameras.png and process.json")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class _RichReporter:
    """One rich progress line per stage (a bar where the stage knows its total); the caller
    runs the stages inside ``with reporter.bar``."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                            BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None):
        task = self.bar.add_task(name, total=total)

        def update(done: int, of: int | None) -> None:
            self.bar.update(task, completed=done, total=of)

        yield update
        total = self.bar.tasks[task].total or 1
        self.bar.update(task, completed=total, total=total)


def run(args: argparse.Namespace) -> int:
    """Run ``nerfmine process``; prints the report's summary."""
    scene_dir = args.output
    if args.skip_sfm and scene_dir is None:
        scene_dir = args.input
    if scene_dir is None:
        raise ConfigError("pass the scene folder to write with -o SCENE_DIR.")
    if args.input is None and not args.skip_sfm:
        raise ConfigError("pass the video file or the folder of photos to process.")

    from nerfmine.process import ProcessOptions, Reporter, process

    options = ProcessOptions(
        frames=args.frames, max_size=args.max_size, matcher=args.matcher,
        camera_model=args.camera_model.lower() if args.camera_model == "AUTO"
        else args.camera_model,
        downscaled=() if args.no_downscaled else (2, 4, 8), overwrite=args.overwrite,
        skip_sfm=args.skip_sfm, verbose=args.verbose)
    reporter = Reporter() if args.quiet else _RichReporter()
    with reporter.bar if not args.quiet else contextlib.nullcontext():
        report = process(None if args.skip_sfm else args.input, scene_dir, options, reporter)
    print(report.summary(), flush=True)
    return 0
