"""``nerfmine eval``: evaluate a run's trained scene again (another split, fewer images, a
moved scene folder), optionally next to its photographs (``--side-by-side``).

The results go to the run folder (``eval_<split>.json``, ``renders/<split>/``), or with
``--output DIR`` to ``DIR`` in the same layout, so that a read-only run (one copied from a
read-only disk) can be evaluated. Whether the folder can be written is checked before the
evaluation starts; a folder that cannot be written is an :class:`~nerfmine.errors.OutputError`
that names it and the fix.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nerfmine.cli.common import check_scene_exists, load_scene
from nerfmine.errors import NerfmineError, OutputError

if TYPE_CHECKING:  # numpy is imported where it is used: ``nerfmine --help`` stays fast
    import numpy as np

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
    p.add_argument("--output", "-o", type=Path, default=None, metavar="DIR",
                   help="write eval_<split>.json and renders/<split>/ into DIR instead of the "
                        "run folder (e.g. for a run on a read-only disk)")
    return p


def check_output_folder(folder: Path, run_dir: Path, given: bool) -> None:
    """Raise :class:`OutputError` unless ``folder`` can be created and written: ``given`` says
    whether the user chose it with ``--output`` (else it is the run folder ``run_dir`` or a
    folder inside it). Called before the evaluation, which can take minutes."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nerfmine-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__
        if given:
            problem = f"cannot write the evaluation here ({cause})"
            fix = "choose a writable folder with --output DIR"
        else:
            where = ("this run folder" if folder == run_dir else
                     f"the renders folder of the run {run_dir}")
            problem = (f"cannot write the evaluation into {where} ({cause}; a run copied from "
                       "a read-only disk?)")
            fix = ("evaluate it with --output DIR, which writes eval_<split>.json and "
                   "renders/<split>/ there instead")
        raise OutputError(f"{folder}: {problem}; {fix}. Nothing was evaluated.") from None


def run(args: argparse.Namespace) -> int:
    if args.side_by_side and args.no_renders:
        raise NerfmineError("--side-by-side writes renders next to their photographs; it cannot "
                            "be combined with --no-renders (drop one of them)")
    changes: dict = {}
    if args.split:
        changes["data"] = {"eval_split": args.split}
    if args.eval_images is not None:
        changes["eval"] = {"max_images": args.eval_images}
    run_dir = Path(args.run_dir)
    given = getattr(args, "output", None) is not None
    out_dir = Path(args.output) if given else run_dir
    # Before torch is imported and the scene loaded (each can take long on a loaded machine);
    # a folder without a checkpoint is load_scene's to explain.
    checked = (run_dir / "checkpoint.pt").is_file()
    if checked:
        check_output_folder(out_dir, run_dir, given)

    from nerfmine.evaluator import Evaluator
    from nerfmine.run_folder import atomic_write_text

    scene = load_scene(run_dir, args.data, changes)
    if not checked:
        check_output_folder(out_dir, run_dir, given)
    split = scene.config.data.eval_split
    save_dir = None if args.no_renders else out_dir / "renders" / split
    check_scene_exists(scene.data_root, run_dir)
    if save_dir is not None:  # an existing renders folder may be read-only on its own
        check_output_folder(save_dir, run_dir, given)
    evaluator = Evaluator(scene)
    result = evaluator.evaluate(save_dir=save_dir)
    if args.side_by_side:
        pairs = write_side_by_side(save_dir, evaluator.data,
                                   [r["name"] for r in result.per_image])
        print(f"wrote {len(pairs)} render/photograph pairs to {save_dir} (*_vs_photo.png)")
    out = {"split": split, "psnr": result.psnr, "ssim": result.ssim, "step": result.step,
           "clock": result.clock, "per_image": result.per_image}
    path = out_dir / f"eval_{split}.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"{split}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f} over "
          f"{len(result.per_image)} views (step {result.step}); written to {path}")
    return 0


def side_by_side(render: np.ndarray, photo_rgba: np.ndarray) -> np.ndarray:
    """[H, 2W + gap, 3] uint8: ``render`` ([H, W, 3] uint8) left, the photograph ([H, W, 4]
    uint8 RGBA, composited over white as evaluation does) right."""
    import numpy as np

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
    import numpy as np
    from PIL import Image

    from nerfmine.run_folder import atomic_save_image

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
        atomic_save_image(out, Image.fromarray(side_by_side(render, photo)))
        written.append(out)
    return written
