"""Cameras: poses, per-camera intrinsics and a lens model, and the rays through their pixels.

One type serves training (rays through random pixels of many cameras), evaluation and renders
(every pixel centre of one camera), camera paths and the viewer. Conventions (docs/design.md):
OpenGL camera-to-world poses (the camera looks down -z, +y up), intrinsics ``fx, fy, cx, cy`` in
pixels with pixel (i, j)'s centre at (i + 0.5, j + 0.5), lens distortion in OpenCV's normalised
coordinates (:mod:`nerfmine.ops.distortion`: "pinhole", "opencv" radial-tangential, "fisheye").

Poses are in the frame they were given in: a loader's world coordinates, or the unit cube the
field lives in after :meth:`Cameras.transformed` (``translation * scale + offset``; the scale is
uniform, so directions do not change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from nerfmine.ops.distortion import (
    MODELS,
    camera_rays,
    rays_from_normalized,
    undistorted_pixel_centres,
)
from nerfmine.ops.rays import camera_frustum_mask, image_rays, pixel_rays

# centre_table's limit: 256 MiB holds 1 lens of 33 Mpixel or 16 lenses of 1920 x 1080
CENTRE_TABLE_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Cameras:
    """N cameras of one image size ``width`` x ``height``.

    ``intrinsics`` is held in float64 so that values given as Python floats (a NeRF-synthetic
    scene's focal length) are kept exactly; rays are made in float32 from them. When every
    camera shares one pinhole (no lens distortion and equal intrinsics, e.g. NeRF-synthetic),
    rays come from :func:`~nerfmine.ops.rays.pixel_rays` with the intrinsics as scalars; otherwise
    from :func:`~nerfmine.ops.distortion.camera_rays`, per camera, with distortion removed. Both
    give the same rays for a shared pinhole (bit for bit on a CPU).
    """

    c2w: Tensor  # [N, 4, 4] float32, OpenGL camera-to-world
    intrinsics: Tensor  # [N, 4] float64: fx, fy, cx, cy in pixels
    width: int
    height: int
    model: str = "pinhole"  # "pinhole" | "opencv" | "fisheye"
    distortion: Tensor | None = None  # [N, 6] float32 k1, k2, k3, k4, p1, p2; None: no lens
    _host: np.ndarray = field(init=False, repr=False, compare=False)  # [N, 4] float64
    _intrinsics32: Tensor = field(init=False, repr=False, compare=False)  # [N, 4] float32
    _shared: tuple[float, float, float, float] | None = field(init=False, repr=False,
                                                             compare=False)
    # (lens of each camera [N] int64, undistorted pixel centres [L, H, W, 2]); see centre_table
    _centres: tuple[Tensor, Tensor] | None = field(init=False, repr=False, compare=False,
                                                   default=None)

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        if self.c2w.dim() != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"Cameras.c2w must be [N, 4, 4], got {list(self.c2w.shape)}")
        if self.intrinsics.shape != (n, 4):
            raise ValueError(f"Cameras.intrinsics must be [{n}, 4] (fx, fy, cx, cy), got "
                             f"{list(self.intrinsics.shape)}")
        if self.model not in MODELS:
            raise ValueError(f"camera model must be one of {MODELS}, got {self.model!r}")
        if self.distortion is not None and self.distortion.shape != (n, 6):
            raise ValueError(f"Cameras.distortion must be [{n}, 6], got "
                             f"{list(self.distortion.shape)}")
        host = self.intrinsics.detach().cpu().double().numpy()
        lens = self.model != "pinhole" and self.distortion is not None
        shared = None if lens or n == 0 or not (host == host[0]).all() else tuple(
            float(v) for v in host[0])
        object.__setattr__(self, "_host", host)
        object.__setattr__(self, "_intrinsics32", self.intrinsics.float())
        object.__setattr__(self, "_shared", shared)

    # ------------------------------------------------------------------ construction
    @classmethod
    def pinhole(cls, c2w: Tensor, fx: float | Sequence[float], fy: float | Sequence[float],
                width: int, height: int, cx: float | None = None,
                cy: float | None = None) -> Cameras:
        """Pinhole cameras with poses ``c2w`` [N, 4, 4]; focal lengths shared (floats) or per
        camera (sequences of N); the principal point at the image centre unless given."""
        n = c2w.shape[0]
        columns = [fx, fy, 0.5 * width if cx is None else cx, 0.5 * height if cy is None else cy]
        intrinsics = torch.stack([torch.as_tensor(v, dtype=torch.float64).expand(n)
                                  for v in columns], dim=-1)  # [N, 4]
        return cls(c2w.float(), intrinsics, int(width), int(height))

    @classmethod
    def from_fov(cls, c2w: Tensor, fov_y: float, width: int, height: int,
                 pixel_aspect: float = 1.0) -> Cameras:
        """Pinhole cameras of vertical field of view ``fov_y`` (radians), centred principal
        point and ``fx = pixel_aspect * fy``."""
        fy = 0.5 * height / math.tan(0.5 * fov_y)
        return cls.pinhole(c2w, fy * pixel_aspect, fy, width, height)

    # ------------------------------------------------------------------ views of the set
    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def aspect(self) -> float:
        """width / height."""
        return self.width / self.height

    def fov_y(self, index: int = 0) -> float:
        """Vertical field of view of camera ``index`` in radians (pinhole focal length)."""
        return 2.0 * math.atan(0.5 * self.height / float(self._host[index, 1]))

    def to(self, device: torch.device | str) -> Cameras:
        """These cameras with their tensors on ``device`` (copied once: a copy inside a
        training step would also stop it from being captured as a CUDA graph)."""
        return Cameras(self.c2w.to(device), self.intrinsics.to(device), self.width,
                       self.height, self.model,
                       None if self.distortion is None else self.distortion.to(device))

    def transformed(self, scale: float, offset: Sequence[float]) -> Cameras:
        """Poses mapped by ``x -> x * scale + offset`` (world to unit cube): rotations are
        unchanged, translations scaled and shifted."""
        c2w = self.c2w.clone()  # [N, 4, 4]
        shift = torch.as_tensor(offset, dtype=c2w.dtype).expand(3).to(c2w.device)  # [3]
        c2w[:, :3, 3] = c2w[:, :3, 3] * float(scale) + shift
        return Cameras(c2w, self.intrinsics, self.width, self.height, self.model,
                       self.distortion)

    def select(self, index: Sequence[int] | Tensor) -> Cameras:
        """The cameras ``index`` (in that order)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Cameras(self.c2w[index.to(self.device)], self.intrinsics[index.to(
            self.intrinsics.device)], self.width, self.height, self.model,
            None if self.distortion is None else self.distortion[index.to(
                self.distortion.device)])

    # ------------------------------------------------------------------ rays
    def _lens(self) -> bool:
        return self.model != "pinhole" and self.distortion is not None

    def rays(self, px: Tensor, py: Tensor, cam: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through pixel positions ``(px, py)`` ([M] float) of cameras ``cam`` ([M]
        int64): origins [M, 3] and unit directions [M, 3], in the frame of the poses."""
        if self._shared is not None:
            return pixel_rays(self.c2w, *self._shared, px, py, cam)
        return camera_rays(self.c2w, self._intrinsics32, self.distortion, self.model, px, py,
                           cam)

    def centre_table(self, max_bytes: int = CENTRE_TABLE_MAX_BYTES
                     ) -> tuple[Tensor, Tensor] | None:
        """The undistorted normalized coordinates of every pixel centre, per lens, for cameras
        with lens distortion: (lens index of each camera [N] int64, table [L, H, W, 2] float32)
        over the L distinct (intrinsics, coefficients) of the set. Built on the first call (on
        the poses' device) and kept; None without a lens, or when the table would exceed
        ``max_bytes`` (many distinct lenses of large images), where rays keep inverting the
        lens per ray. Call it before a training step is captured as a CUDA graph."""
        if not self._lens():
            return None
        if self._centres is None:
            device = self.device
            lens = torch.cat([self._intrinsics32.to(device),
                              self.distortion.to(device=device, dtype=torch.float32)], dim=1)
            unique, lens_of = torch.unique(lens, dim=0, return_inverse=True)  # [L, 10], [N]
            if unique.shape[0] * self.height * self.width * 8 > max_bytes:
                return None
            table = torch.stack([
                undistorted_pixel_centres(row[:4], row[4:], self.model, self.width, self.height)
                for row in unique])  # [L, H, W, 2]
            object.__setattr__(self, "_centres", (lens_of, table))
        return self._centres

    def centre_rays(self, col: Tensor, row: Tensor, cam: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through the centres of pixels ``(col, row)`` ([M] int64) of cameras ``cam``
        ([M] int64): ``rays(col + 0.5, row + 0.5, cam)``, with the lens inverted by a lookup in
        :meth:`centre_table` where there is one (the same values, bit for bit)."""
        table = self.centre_table()
        if table is None:
            return self.rays(col.float() + 0.5, row.float() + 0.5, cam)
        lens_of, centres = table
        xy = centres[lens_of[cam], row, col]  # [M, 2]
        return rays_from_normalized(self.c2w, xy[:, 0], xy[:, 1], cam)

    def image_rays(self, index: int) -> tuple[Tensor, Tensor]:
        """Rays through every pixel centre of camera ``index``, row-major (pixel row * width +
        column): origins [H*W, 3] and unit directions [H*W, 3]. A lens is inverted per pixel
        unless :meth:`centre_table` has been built (a training set's is)."""
        if not self._lens():
            fx, fy, cx, cy = (float(v) for v in self._host[index])
            return image_rays(self.c2w[index], fx, fy, cx, cy, self.width, self.height)
        device = self.device
        rows, cols = torch.meshgrid(torch.arange(self.height, device=device),
                                    torch.arange(self.width, device=device), indexing="ij")
        cam = torch.full_like(rows.reshape(-1), index)  # [H*W]
        if self._centres is not None:
            return self.centre_rays(cols.reshape(-1), rows.reshape(-1), cam)
        px, py = cols.reshape(-1).float() + 0.5, rows.reshape(-1).float() + 0.5  # [H*W]
        return camera_rays(self.c2w, self._intrinsics32, self.distortion, self.model, px, py,
                           cam)

    def visible(self, points: Tensor) -> Tensor:
        """[P] bool: the point lies in front of a camera and projects inside its image, with
        the first camera's intrinsics for every pose and no lens distortion (the occupancy
        grid's test of which cells the training cameras see)."""
        fx, fy, cx, cy = (float(v) for v in self._host[0])
        return camera_frustum_mask(points, self.c2w, fx, fy, cx, cy, self.width, self.height)
