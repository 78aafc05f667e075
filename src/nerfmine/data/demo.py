"""The small demo scene shipped inside the package (lego, 100x100)."""

from __future__ import annotations

from pathlib import Path

from nerfmine.errors import DataError


def demo_scene_path() -> Path:
    """Folder of the packaged demo scene ``nerfmine/demo/lego_100`` (Blender format)."""
    path = Path(__file__).resolve().parent.parent / "demo" / "lego_100"
    if not (path / "transforms_train.json").is_file():
        raise DataError(
            f"the packaged demo scene is missing: expected {path / 'transforms_train.json'}. "
            "Reinstall nerfmine, or in a source checkout run scripts/make_demo_scene.py."
        )
    return path
