"""``nerfmine view``: serve the web viewer (:mod:`nerfmine.viewer`) for a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfmine.errors import NerfmineError

# The viewer's defaults, repeated here so that building the parser imports neither torch nor
# viser (``nerfmine --help`` stays fast); nerfmine.viewer.server defines the same values.
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
MIN_SIDE = 32
INSTALL_HINT = "pip install 'nerfmine[view]'"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "view", help="web viewer for a trained run (viser; works over SSH port forwarding)",
        description="Serve a web page that renders a run's EMA weights from the browser's "
                    "camera and shows the training cameras. Needs viser: "
                    f"{INSTALL_HINT}.")
    p.add_argument("run_dir", type=Path, help="run folder holding checkpoint.pt")
    add_server_args(p, prefix="")
    p.add_argument("--max-res", type=int, default=None,
                   help="long side in pixels of a still view's render (default 128 on a CPU, "
                        "1024 on a GPU)")
    p.add_argument("--background", default="white",
                   help="white (default), black, or r,g,b with each value in [0, 1]")
    p.add_argument("--data", type=Path, default=None,
                   help="scene folder, if it moved since training (for the training cameras)")
    return p


def add_server_args(parser, prefix: str = "") -> None:
    """--port/--host (``view``) or --view-port/--view-host (``train --view``)."""
    parser.add_argument(f"--{prefix}port", type=int, default=DEFAULT_PORT,
                        help=f"viewer port (default {DEFAULT_PORT})")
    parser.add_argument(f"--{prefix}host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only, "
                             "reach it through SSH port forwarding; 0.0.0.0 opens it to the "
                             "network)")


def run(args: argparse.Namespace) -> int:
    """``nerfmine view RUN_DIR``; raises :class:`NerfmineError` for user mistakes."""
    from nerfmine.cli.common import load_scene, parse_background
    from nerfmine.viewer import check_port, import_viser, make_viewer, wait_for_interrupt

    import_viser()
    background = parse_background(args.background)
    check_port(args.host, args.port)
    if args.max_res is not None and args.max_res < MIN_SIDE:
        raise NerfmineError(f"--max-res must be at least {MIN_SIDE} pixels, got {args.max_res}.")
    scene = load_scene(args.run_dir, args.data)
    viewer = make_viewer(scene, host=args.host, port=args.port, max_res=args.max_res,
                         background=background, title=f"nerfmine: {Path(args.run_dir).name}")
    viewer.start()
    try:
        print(f"viewing {args.run_dir} (step {scene.step}) on {scene.device}", flush=True)
        print(viewer.banner(), flush=True)
        print("Ctrl-C stops the viewer", flush=True)
        wait_for_interrupt(viewer)
    finally:
        viewer.stop()
    print("viewer stopped", flush=True)
    return 0
