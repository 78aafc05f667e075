"""Build the packaged demo scene src/nerfmine/demo/lego_100 from the 400x400 lego copy.

Downsamples every train view and the first 25 test views to 100x100 by area averaging (PIL BOX)
and writes Blender-format transforms files, optimised PNGs and the attribution.

    python scripts/make_demo_scene.py [--source ../shared/data/lego_400] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE = 100
N_TEST = 25

ATTRIBUTION = """\
# Attribution

This folder holds a 100x100 copy of the "lego" scene of the NeRF-synthetic dataset
(Mildenhall et al., "NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis",
ECCV 2020), distributed under the Creative Commons Attribution 3.0 licence (CC BY 3.0).

The lego model is by Heinzelnisse (BlendSwap), licensed under CC BY 3.0.

The images were downsampled with area averaging from the half-resolution (400x400) copy
redistributed in the public repository weixinhum2023/simple_nerf. Contents: all {n_train} train
views and the first {n_test} test views, with the original camera poses and camera_angle_x.

Made by scripts/make_demo_scene.py.
"""


def convert_split(source: Path, out: Path, split: str, limit: int | None) -> int:
    """Downsample one split; returns the number of views written."""
    meta = json.loads((source / f"transforms_{split}.json").read_text())
    frames = meta["frames"][:limit] if limit is not None else meta["frames"]
    (out / split).mkdir(parents=True, exist_ok=True)
    new_frames = []
    for frame in frames:
        rel = frame["file_path"]
        src = source / rel
        if not src.is_file():
            src = source / (rel + ".png")
        name = Path(rel).stem
        with Image.open(src) as im:
            small = im.convert("RGBA").resize((SIZE, SIZE), Image.BOX)
        small.save(out / split / f"{name}.png", optimize=True)
        new_frames.append(
            {"file_path": f"./{split}/{name}", "transform_matrix": frame["transform_matrix"]}
        )
    new_meta = {"camera_angle_x": meta["camera_angle_x"], "frames": new_frames}
    (out / f"transforms_{split}.json").write_text(json.dumps(new_meta, indent=2) + "\n")
    return len(new_frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / ".." / "shared" / "data" / "lego_400")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "nerfmine" / "demo" / "lego_100")
    args = parser.parse_args()
    source, out = args.source.resolve(), args.out.resolve()
    if not (source / "transforms_train.json").is_file():
        raise SystemExit(f"{source} has no transforms_train.json; pass --source <lego_400 folder>")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n_train = convert_split(source, out, "train", None)
    n_test = convert_split(source, out, "test", N_TEST)
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(n_train=n_train, n_test=n_test))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {n_train} train + {n_test} test views to {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
