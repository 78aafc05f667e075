"""``nerfmine render``: render a trained run along a camera path into PNG frames and MP4 videos.

Outputs in ``--output DIR`` (default ``RUN_DIR/render_<path>``):

- ``DIR/rgb/frame_00000.png``: 8-bit RGB over ``--background``;
- ``DIR/depth/frame_00000.png``: 8-bit RGB, the expected depth (sum of weights * t divided by
  the opacity) through matplotlib's ``turbo`` colormap, near = blue, far = red, times the
  opacity (empty space is black). One depth range serves the whole path so the video does not
  flicker: from the nearest to the farthest point of the occupied cells of the occupancy grid,
  as seen from any of the path's cameras. The range, in world units, is in ``DIR/render.json``;
- ``DIR/depth/frame_00000.npy`` beside each depth PNG: the raw depth, float32 [H, W], the
  expected distance along each pixel's ray (sum of weights * t divided by the opacity) in the
  world units of the scene as loaded (the unit cube's t divided by the scene's scale): a
  transforms.json or Blender scene's own units; for COLMAP and LLFF folders the normalised
  world the loader made, centred on the cameras and divided by their largest distance from
  that centre (the run's data notes give that radius), so multiply by it for COLMAP's
  units. NaN where the ray meets nothing (opacity below 1e-6);
- ``DIR/alpha/frame_00000.png``: 8-bit grayscale opacity (255 = opaque);
- ``DIR/<output>.mp4`` per output (H.264 through imageio-ffmpeg, ``pip install
  'nerfmine[video]'``), when ``--video`` (the default if imageio-ffmpeg is installed);
- ``DIR/camera_path.json``: the path rendered, in nerfmine's camera-path format
  (:mod:`nerfmine.camera_paths`), so a render can be repeated or edited.

Renders are deterministic: the same run, path and flags give the same pixels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nerfmine.cli.common import (
    EXIT_USER_ERROR,
    check_scene_exists,
    load_scene,
    parse_background,
)
from nerfmine.errors import NerfmineError

# torch, numpy and the modules that import them are imported inside the functions that render,
# so that building the parser stays fast (``nerfmine --help`` imports no torch).
if TYPE_CHECKING:
    import numpy as np
    import torch

    from nerfmine import camera_paths as cp
    from nerfmine.cameras import Cameras

PATH_KINDS = ("orbit", "spiral", "interpolate")
OUTPUTS = ("rgb", "depth", "alpha")
MAX_RAY_BUFFER_BYTES = 4 << 30
# Bytes per pixel of one frame's ray buffers: origins and directions (24 B), the pixel grid and
# camera-space directions built on the way (~44 B), the background (12 B) and the outputs with
# their concatenated copies (~40 B): 128 B is a safe upper estimate.
RAY_BYTES_PER_PIXEL = 128
MAX_INTERPOLATE_KEYS = 12


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``render`` subcommand to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "render", help="render a trained run along a camera path (PNG frames, MP4 videos)",
        description="Render a trained run's EMA weights along a camera path: an orbit, a "
                    "spiral, an interpolation through the training cameras, or a camera-path "
                    "JSON file (nerfmine's or nerfstudio's format).")
    p.add_argument("run_dir", type=Path, help="run folder holding checkpoint.pt")
    p.add_argument("--path", default="orbit", metavar="{orbit,spiral,interpolate,FILE.json}",
                   help="camera path (default: orbit around the scene at the training cameras' "
                        "mean distance and height)")
    p.add_argument("--frames", type=int, default=120,
                   help="number of frames of a generated path (default 120; a FILE.json sets "
                        "its own)")
    p.add_argument("--fps", type=float, default=None,
                   help="video frame rate (default 30, or the FILE.json's)")
    p.add_argument("--width", type=int, default=None,
                   help="image width (default: the training images'; keeps their aspect ratio "
                        "if only --height is given)")
    p.add_argument("--height", type=int, default=None, help="image height (default: likewise)")
    p.add_argument("--fov", type=float, default=None,
                   help="vertical field of view in degrees (default: the training camera's, "
                        "or the FILE.json's)")
    p.add_argument("--background", default="white",
                   help="white (default), black, or r,g,b with each value in [0, 1]")
    p.add_argument("--outputs", default="rgb",
                   help="comma-separated: rgb, depth, alpha (default rgb)")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=None,
                   help="also write an MP4 per output (default: yes if imageio-ffmpeg is "
                        "installed: pip install 'nerfmine[video]')")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="output folder (default: RUN_DIR/render_<path>)")
    p.add_argument("--data", type=Path, default=None,
                   help="scene folder, if it moved since training (its training cameras set "
                        "the default path, size and field of view)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``nerfmine render``; prints a user mistake and returns 2 instead of raising."""
    try:
        return render(args)
    except NerfmineError as exc:
        print(f"nerfmine: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


# --------------------------------------------------------------------------- argument checks
def parse_outputs(text: str) -> list[str]:
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in OUTPUTS]
    if bad or not names:
        raise NerfmineError(f"--outputs: expected a comma-separated list of rgb, depth, alpha, "
                            f"got '{text}'" + (f" (unknown: {', '.join(bad)})" if bad else "")
                            + ".")
    return list(dict.fromkeys(names))


def ray_buffer_bytes(width: int, height: int) -> int:
    return int(width) * int(height) * RAY_BYTES_PER_PIXEL


def check_size(width, height) -> None:
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and value <= 0:
            raise NerfmineError(f"{name} must be a positive number of pixels, got {value}.")
    if width is not None and height is not None:
        need = ray_buffer_bytes(width, height)
        if need > MAX_RAY_BUFFER_BYTES:
            raise NerfmineError(
                f"a {width}x{height} frame would need about {need / 2**30:.1f} GiB for its ray "
                f"buffers ({RAY_BYTES_PER_PIXEL} bytes per pixel), more than the "
                f"{MAX_RAY_BUFFER_BYTES / 2**30:.0f} GiB limit; choose a smaller --width/--height.")


def video_available() -> bool:
    return (importlib.util.find_spec("imageio") is not None
            and importlib.util.find_spec("imageio_ffmpeg") is not None)


# --------------------------------------------------------------------------- the command
def _resolve_size(args, cams: Cameras | None, file_path: cp.CameraPath | None):
    width, height = args.width, args.height
    if file_path is not None:
        base_w, base_h = file_path.width, file_path.height
    elif cams is not None:
        base_w, base_h = cams.width, cams.height
    else:
        base_w = base_h = None
    if width is None and height is None:
        width, height = base_w, base_h
    elif width is None:
        width = max(1, round(height * base_w / base_h)) if base_w else height
    elif height is None:
        height = max(1, round(width * base_h / base_w)) if base_w else width
    return int(width), int(height)


def _build_path(args, scene, cams: Cameras | None) -> tuple[str, cp.CameraPath, float]:
    """(name, path in world coordinates, fx / fy of the pixels). Generated paths start from
    the training cameras ``cams`` (world frame) and use a pinhole camera with the first
    training image's focal lengths (lens distortion is not rendered)."""
    import numpy as np
    import torch

    from nerfmine import camera_paths as cp

    kind = str(args.path)
    file_path = None
    if kind not in PATH_KINDS:
        p = Path(kind)
        if not p.exists() and p.suffix.lower() != ".json":
            raise NerfmineError(f"--path: expected orbit, spiral, interpolate or a camera-path "
                                f"JSON file, got '{kind}' (no such file).")
        file_path = cp.read_camera_path(p)
    if file_path is None and cams is None:
        raise NerfmineError("internal: training cameras are needed for a generated path.")
    width, height = _resolve_size(args, cams, file_path)
    check_size(width, height)
    pixel_aspect = 1.0
    if file_path is None and cams is not None:
        fx, fy = (float(v) for v in cams.intrinsics[0, :2])
        pixel_aspect = fx / fy

    if file_path is not None:
        n = len(file_path)
        fov = (torch.full((n,), float(args.fov)) if args.fov is not None
               else file_path.fov_y.clone())
        # A resized file path keeps its vertical field of view, so it frames the same view.
        fps = args.fps if args.fps is not None else file_path.fps
        path = cp.CameraPath(c2w=file_path.c2w, fov_y=fov, width=width, height=height, fps=fps)
        return Path(kind).stem, path, pixel_aspect

    if args.frames is None or args.frames < 1:
        raise NerfmineError(f"--frames must be a whole number >= 1, got {args.frames}.")
    center = scene.world_center()  # the unit cube's centre, in world coordinates
    poses = cams.c2w.double().numpy()  # [N, 4, 4] world
    params = cp.default_path_params(poses, center)
    n = int(args.frames)
    if kind == "orbit":
        c2w = cp.orbit_path(params.center, params.radius, params.height, n, up=params.up)
    elif kind == "spiral":
        amplitude = params.height_spread if params.height_spread > 1e-6 else 0.25 * params.radius
        c2w = cp.spiral_path(params.center, params.radius, amplitude, n, n_turns=2,
                             height=params.height, up=params.up)
    else:
        order = cp.sort_by_azimuth(poses, params.center, params.up)
        if len(order) > MAX_INTERPOLATE_KEYS:
            pick = np.round(np.linspace(0, len(order) - 1, MAX_INTERPOLATE_KEYS)).astype(int)
            order = order[pick]
        c2w = cp.interpolate_path(poses[order], n)
    fov_value = float(args.fov) if args.fov is not None else math.degrees(cams.fov_y(0))
    fps = args.fps if args.fps is not None else cp.DEFAULT_FPS
    path = cp.CameraPath(c2w=c2w, fov_y=torch.full((n,), fov_value), width=width,
                         height=height, fps=fps)
    return kind, path, pixel_aspect


def _depth_range(c2w_unit: torch.Tensor, bitfield: torch.Tensor) -> tuple[float, float]:
    """Nearest and farthest distance (unit cube) from the cameras to the occupied cells' box."""
    import numpy as np
    import torch

    occupied = torch.nonzero(bitfield)
    res = bitfield.shape[-1]
    if bitfield.dim() == 4:  # cascades
        from nerfmine.occupancy import grid_extent, occupied_cell_boxes

        boxes, size = occupied_cell_boxes(bitfield)
        if size.numel() == 0:
            lo, hi = np.full(3, grid_extent(bitfield)[0]), np.full(3, grid_extent(bitfield)[1])
        else:
            lo = boxes.min(0).values.cpu().double().numpy()
            hi = (boxes + size[:, None]).max(0).values.cpu().double().numpy()
    elif occupied.numel() == 0:
        lo, hi = np.zeros(3), np.ones(3)
    else:
        lo = occupied.min(0).values.cpu().numpy() / res
        hi = (occupied.max(0).values.cpu().numpy() + 1) / res
    eyes = c2w_unit[:, :3, 3].cpu().double().numpy()  # [N, 3]
    nearest = np.clip(eyes, lo, hi)
    near = float(np.linalg.norm(eyes - nearest, axis=-1).min())
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])  # [8, 3]
    far = float(np.linalg.norm(eyes[:, None] - corners[None], axis=-1).max())
    return near, max(far, near + 1e-6)


def _depth_image(depth: torch.Tensor, opacity: torch.Tensor, near: float, far: float):
    import numpy as np
    from matplotlib import colormaps

    d = depth.cpu().double().numpy()
    a = opacity.cpu().double().numpy().clip(0.0, 1.0)
    expected = np.where(a > 1e-6, d / np.maximum(a, 1e-6), far)
    norm = ((expected - near) / (far - near)).clip(0.0, 1.0)
    rgb = colormaps["turbo"](norm)[..., :3] * a[..., None]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _raw_depth(depth: torch.Tensor, opacity: torch.Tensor, scale: float) -> np.ndarray:
    """Expected ray distance [H, W] float32 in world units; NaN where nothing is hit."""
    import numpy as np

    d = depth.cpu().double().numpy()
    a = opacity.cpu().double().numpy()
    hit = a > 1e-6
    return np.where(hit, d / np.where(hit, a, 1.0) / scale, np.nan).astype(np.float32)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    import numpy as np

    return (x.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def render(args: argparse.Namespace) -> int:
    """Like :func:`run`, but raises :class:`NerfmineError` for user mistakes."""
    import numpy as np
    from PIL import Image

    from nerfmine import camera_paths as cp
    from nerfmine.cameras import Cameras
    from nerfmine.run_folder import atomic_write

    # Checks that need no run first, so a typo fails fast.
    check_size(getattr(args, "width", None), getattr(args, "height", None))
    background = parse_background(args.background)
    outputs = parse_outputs(args.outputs)
    if args.fov is not None and not 0.0 < args.fov < 180.0:
        raise NerfmineError(f"--fov must be a vertical field of view in degrees in (0, 180), "
                            f"got {args.fov}.")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise NerfmineError(f"--fps must be > 0, got {args.fps}.")
    if args.frames is not None and args.frames < 1:
        raise NerfmineError(f"--frames must be a whole number >= 1, got {args.frames}.")
    can_video = video_available()
    if args.video and not can_video:
        raise NerfmineError("--video needs imageio and imageio-ffmpeg, which are not installed: "
                            "pip install 'nerfmine[video]' (or pass --no-video to write the PNG "
                            "frames only).")
    want_video = can_video if args.video is None else bool(args.video)

    run_dir = Path(args.run_dir)
    scene = load_scene(run_dir, getattr(args, "data", None))

    cams = None
    if str(args.path) in PATH_KINDS:  # a file brings its own size and field of view
        check_scene_exists(scene.data_root, run_dir)
        cams = scene.train_cameras()
    name, path, pixel_aspect = _build_path(args, scene, cams)

    out_dir = Path(args.output) if args.output else run_dir / f"render_{name}"
    try:
        for o in outputs:
            (out_dir / o).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NerfmineError(f"{out_dir}: cannot write the render folder here ({exc.strerror}); "
                            "choose another place with --output.") from None
    cp.write_camera_path(out_dir / "camera_path.json", path)

    w, h = path.width, path.height
    fy = [path.focal(i) for i in range(len(path))]
    frames_cams = scene.to_unit(Cameras.pinhole(path.c2w, [f * pixel_aspect for f in fy], fy,
                                                w, h))
    near, far = _depth_range(frames_cams.c2w, scene.occupancy.bitfield)
    scale = scene.scale

    frames: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    print(f"rendering {len(path)} frames of {w}x{h} ({name}) into {out_dir}", flush=True)
    with scene.ema_weights():
        for i in range(len(path)):
            out = scene.render(frames_cams, i, background)
            images = {}
            if "rgb" in outputs:
                images["rgb"] = _to_u8(out["rgb"])
            if "depth" in outputs:
                images["depth"] = _depth_image(out["depth"], out["opacity"], near, far)
                raw = _raw_depth(out["depth"], out["opacity"], scale)
                atomic_write(out_dir / "depth" / f"frame_{i:05d}.npy",
                             lambda f, raw=raw: np.save(f, raw))
            if "alpha" in outputs:
                images["alpha"] = _to_u8(out["opacity"])
            for o, img in images.items():
                Image.fromarray(img).save(out_dir / o / f"frame_{i:05d}.png")
                if want_video:
                    frames[o].append(img)

    videos = []
    if want_video:
        import imageio

        for o in outputs:
            clip = np.stack(frames[o])
            if clip.ndim == 3:  # gray: the encoder wants RGB
                clip = np.repeat(clip[..., None], 3, axis=-1)
            # H.264 with yuv420p needs even sizes: pad by repeating the last row / column.
            ph, pw = clip.shape[1] % 2, clip.shape[2] % 2
            if ph or pw:
                clip = np.pad(clip, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
            video = out_dir / f"{o}.mp4"
            writer = imageio.get_writer(video, format="FFMPEG", mode="I", fps=path.fps,
                                        codec="libx264", pixelformat="yuv420p",
                                        macro_block_size=1)
            try:
                for frame in clip:
                    writer.append_data(frame)
            finally:
                writer.close()
            videos.append(video)

    info = {
        "run_dir": str(run_dir), "step": scene.step, "path": str(args.path),
        "frames": len(path), "width": w, "height": h, "fps": path.fps,
        "background": list(background), "outputs": outputs,
        "depth_png": "8-bit turbo colormap of expected depth times opacity",
        "depth_range_world": [near / scale, far / scale],
        "videos": [v.name for v in videos],
    }
    if "depth" in outputs:
        info["depth_npy"] = ("float32 expected distance along the ray in the world units of "
                             "the scene as loaded, NaN where nothing is hit")
    (out_dir / "render.json").write_text(json.dumps(info, indent=2) + "\n")
    where = ", ".join(f"{o}/" for o in outputs)
    print(f"wrote {len(path)} frames to {out_dir}: {where}"
          + (f"; videos {', '.join(v.name for v in videos)}" if videos else
             "; no video (pip install 'nerfmine[video]' for MP4)" if not can_video else ""))
    return 0
