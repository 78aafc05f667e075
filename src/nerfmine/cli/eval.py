"""``nerfmine eval``: evaluate a run's trained scene again (another split, fewer images, a
moved scene folder), optionally next to its photographs (``--side-by-side``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nerfmine.cli.common import check_scene_exists, load_scene
from nerfmine.errors import NerfmineError

SIDE_BY_SIDE_GAP = 4  # white pixels between a render and its photograph


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="re-evaluate a run's checkpoint")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's)")
    p.add_argument("--data", type=Path, default=None,
                   help="scene folder, if it moved since training")
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--no-renders", action="store_true", help="do not write the renders")
    p.add_argument("--side-by-side", action="store_true",
                   help="also write renders/<split>/<name>_vs_photo.png: each render (left) "
                        "next to its photograph over white (right)")
    return p


def run(args: argparse.Namespace) -> int:
    from nerfmine.evaluator import Evaluator

    if args.side_by_side and args.no_renders:
        raise NerfmineError("--side-by-side writes renders next to their photographs; it cannot "
                            "be combined with --no-renders (drop one of them)")
    changes: dict = {}
    if args.split:
        changes["data"] = {"eval_split": args.split}
    if args.eval_images is not None:
        changes["eval"] = {"max_images": args.eval_images}
    run_dir = args.run_dir
    scene = load_scene(run_dir, args.data, changes)
    split = scene.config.data.eval_split
    save_dir = None if args.no_renders else run_dir / "renders" / split
    check_scene_exists(scene.data_root, run_dir)
    evaluator = Evaluator(scene)
    result = evaluator.evaluate(save_dir=save_dir)
    if args.side_by_side:
        pairs = write_side_by_side(save_dir, evaluator.data,
                                   [r["name"] for r in result.per_image])
        print(f"wrote {len(pairs)} render/photograph pairs to {save_dir} (*_vs_photo.png)")
    out = {"split": split, "psnr": result.psnr, "ssim": result.ssim, "step": result.step,
           "clock": result.clock, "per_image": result.per_image}
    path = run_dir / f"eval_{split}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{split}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f} over "
          f"{len(result.per_image)} views (step {result.step}); written to {path}")
    return 0


def side_by_side(render: np.ndarray, photo_rgba: np.ndarray) -> np.ndarray:
    """[H, 2W + gap, 3] uint8: ``render`` ([H, W, 3] uint8) left, the photograph ([H, W, 4]
    uint8 RGBA, composited over white as evaluation does) right."""
    rgb = photo_rgba[..., :3].astype(np.float64)
    alpha = photo_rgba[..., 3:].astype(np.float64) / 255.0
    photo = (rgb * alpha + 255.0 * (1.0 - alpha) + 0.5).clip(0, 255).astype(np.uint8)
    if render.shape != photo.shape:
        raise NerfmineError(f"a render of {render.shape[1]}x{render.shape[0]} cannot be paired "
                            f"with a photograph of {photo.shape[1]}x{photo.shape[0]}.")
    gap = np.full((render.shape[0], SIDE_BY_SIDE_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([render, gap, photo], axis=1)


def write_side_by_side(folder: Path, data, names: list[str]) -> list[Path]:
    """Write ``<name>_vs_photo.png`` in ``folder`` for the evaluation renders ``<name>.png``
    there, pairing each with the photograph of the same name in ``data`` (a SceneData)."""
    from PIL import Image

    index = {p.stem: i for i, p in enumerate(data.image_paths)}
    written = []
    for name in names:
        render_path = Path(folder) / f"{name}.png"
        if name not in index:
            raise NerfmineError(f"no photograph named '{name}' in the evaluation split "
                                f"'{data.split}' to pair with {render_path}.")
        try:
            with Image.open(render_path) as im:
                render = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise NerfmineError(f"{render_path}: cannot read the render ({exc}).") from None
        photo = data.images[index[name]].cpu().numpy()
        out = Path(folder) / f"{name}_vs_photo.png"
        Image.fromarray(side_by_side(render, photo)).save(out)
        written.append(out)
    return written
