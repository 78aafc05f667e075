"""What every loader returns: one split of a scene (:class:`SceneData`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nerfmine.cameras import Cameras


@dataclass
class SceneData:
    """One split of a scene: RGBA images, OpenGL poses in world units and pinhole intrinsics."""

    images: torch.Tensor  # [N, H, W, 4] uint8 RGBA
    c2w: torch.Tensor  # [N, 4, 4] float32, OpenGL camera-to-world, world coordinates
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image_paths: list[Path]
    split: str
    scale: float = 0.33
    offset: tuple = field(default=(0.5, 0.5, 0.5))
    # Real captures (transforms.json, COLMAP); NeRF-synthetic scenes keep the defaults.
    intrinsics: torch.Tensor | None = None  # [N, 4] float64 fx, fy, cx, cy per image (pixels)
    distortion: torch.Tensor | None = None  # [N, 6] float32 k1, k2, k3, k4, p1, p2 per image
    camera_model: str = "pinhole"  # "pinhole" | "opencv" | "fisheye"
    aabb_scale: float = 1.0  # instant-ngp's scene extent: the box is 0.5 +- aabb_scale / 2
    dialect: str = "blender"  # "blender" | "instant-ngp" | "nerfstudio"
    sharpness: torch.Tensor | None = None  # [N] float32 per-frame sharpness (NaN: none given)
    notes: list[str] = field(default_factory=list)  # what the loader did that the user should know

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def cameras(self) -> Cameras:
        """The split's cameras in world coordinates: per-image intrinsics and lens distortion
        where the data has them (captures), else the one pinhole camera (NeRF-synthetic)."""
        n = len(self)
        if self.intrinsics is None:
            intrinsics = torch.tensor([[self.fx, self.fy, self.cx, self.cy]],
                                      dtype=torch.float64).expand(n, 4)
        else:
            intrinsics = self.intrinsics.to(torch.float64)
        return Cameras(self.c2w.float(), intrinsics, self.width, self.height,
                       self.camera_model, self.distortion)
