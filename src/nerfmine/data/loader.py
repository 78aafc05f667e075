"""One entry point for every scene format: :func:`load_scene` looks at what it is given and
hands it to the loader of its format.

- A folder with ``transforms_{split}.json`` is a NeRF-synthetic (Blender) scene:
  :func:`nerfmine.data.blender.load_blender`.
- A transforms.json (the file, or a folder holding it), instant-ngp's or nerfstudio's:
  :func:`nerfmine.data.transforms.load_transforms`.
- An LLFF or Mip-NeRF 360 folder (``poses_bounds.npy`` beside ``images/``, maybe with
  ``images_2/4/8/``) with no transforms file: :func:`nerfmine.data.llff.load_llff` (it wins
  over a COLMAP model in the same folder: it needs no pycolmap and reads the pre-downscaled
  images).
- A COLMAP project folder, i.e. one holding the sparse model ``sparse/0/`` and the images
  ``images/`` and no ``transforms.json`` or ``transforms_{split}.json`` (a converted
  transforms.json wins): :func:`nerfmine.data.colmap.load_colmap` (needs the optional pycolmap:
  ``pip install 'nerfmine[colmap]'``).
"""

from __future__ import annotations

import math
from pathlib import Path

from nerfmine.data.blender import load_blender
from nerfmine.data.capture import check_capture_args
from nerfmine.data.files import available_splits, link_problem
from nerfmine.data.llff import is_llff, load_llff
from nerfmine.data.scene_data import SceneData
from nerfmine.data.transforms import load_transforms
from nerfmine.errors import DataError


def load_scene(
    path: str | Path,
    split: str = "train",
    downscale: int = 1,
    holdout_every: int = 8,
    skip_missing: bool = False,
    decode: bool = True,
    min_sharpness: float | None = None,
) -> SceneData:
    """Load a split of a scene in any format nerfmine reads (see the module docstring).

    ``min_sharpness`` (transforms.json only): drop the frames whose per-frame ``sharpness``
    (instant-ngp's colmap2nerf writes one: the variance of the image's Laplacian) is below it,
    before the hold-out, so every split sees the same frames.

    ``decode=False`` reads poses, intrinsics and image headers only: ``images`` is then a
    placeholder on the ``meta`` device with the split's shape [N, H, W, 4] (memory estimates,
    camera paths), and the image files are not decoded.

    Returns the split's images with per-image ``intrinsics`` [N, 4] and ``distortion`` [N, 6]
    (None for a pinhole camera), ``camera_model``, ``dialect``, ``aabb_scale``, ``scale``,
    ``offset`` and ``notes``. ``SceneData.fx/fy/cx/cy`` hold the first image's intrinsics.
    """
    path = Path(path).expanduser()
    if not path.exists():
        problem = link_problem(path)
        if problem:
            raise DataError(f"data path {path} {problem}; point it at the real scene folder or "
                            "file.")
        raise DataError(
            f"data path {path} does not exist; pass a transforms.json file or the folder "
            "that holds it (or a Blender folder with transforms_train.json)."
        )
    no_transforms = path.is_dir() and not (path / "transforms.json").is_file() and not (
        path / f"transforms_{split}.json").is_file()
    if no_transforms and is_llff(path):
        _no_sharpness(min_sharpness, f"{path} is an LLFF scene")
        check_capture_args(f"{path} is an LLFF scene", split, downscale, holdout_every, "image")
        return load_llff(path, split, downscale, holdout_every, decode=decode)
    if (
        path.is_dir()
        and (path / "sparse" / "0").is_dir()
        and (path / "images").is_dir()
        and not (path / "transforms.json").is_file()
        and not (path / f"transforms_{split}.json").is_file()
    ):
        _no_sharpness(min_sharpness, f"{path} is a COLMAP model")
        from nerfmine.data.colmap import load_colmap  # pycolmap is imported only there

        return load_colmap(
            path / "sparse" / "0", path / "images", split, downscale, holdout_every, skip_missing,
            decode=decode,
        )
    if path.is_dir():
        if (path / f"transforms_{split}.json").is_file():
            _no_sharpness(min_sharpness, f"{path} is a NeRF-synthetic (Blender) scene")
            return load_blender(path, split, downscale, decode=decode)
        if not (path / "transforms.json").is_file():
            if available_splits(path):
                return load_blender(path, split, downscale, decode=decode)  # lists the splits
            raise DataError(
                f"{path} holds neither transforms.json nor transforms_{split}.json; pass the "
                "capture's transforms.json (instant-ngp or nerfstudio) or a Blender folder."
            )
        path = path / "transforms.json"
    check_capture_args(f"{path} is a single transforms file", split, downscale, holdout_every,
                       "frame")
    if min_sharpness is not None and not (
            isinstance(min_sharpness, (int, float)) and math.isfinite(min_sharpness)
            and min_sharpness >= 0):
        raise DataError(f"min_sharpness must be a number >= 0, got {min_sharpness!r}.")
    return load_transforms(path, split, downscale, holdout_every, skip_missing, decode,
                           min_sharpness)


def _no_sharpness(min_sharpness: float | None, what: str) -> None:
    if min_sharpness is not None:
        raise DataError(f"{what}: --min-sharpness (data.min_sharpness) applies to a "
                        "transforms.json whose frames carry a 'sharpness'; leave it out.")
