"""A training step's rays: random pixels of the training images, through their cameras.

Each ray goes through a pixel drawn uniformly from all training pixels (camera, column, row),
through its centre (or a random point of it with ``subpixel``, instant-ngp's choice), and is
fitted to the pixel's RGBA colour composited over a random background colour, so that the
field learns transparency instead of a fixed backdrop (instant-ngp's training of NeRF-synthetic
scenes). Through centres, a lens is undone by a lookup in the cameras' table of undistorted
pixel centres; random points of pixels invert it per ray (Newton's method). A per-ray jitter
in [0, 1) places the ray's first marching candidate.

The images live on the device, or with ``images_on_host`` in pinned host memory
(:class:`~nerfmine.data.host_pixels.HostPixels`), which then draws the pixel indices on the host
from a generator reseeded per step; a step that gathers pixels on the host cannot be replayed
as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nerfmine.cameras import Cameras
from nerfmine.data.host_pixels import HostPixels


@dataclass
class RayBatch:
    """A step's rays, all on the device."""

    origins: Tensor  # [R, 3] unit-cube coordinates
    directions: Tensor  # [R, 3] unit vectors
    background: Tensor  # [R, 3] random background colour of each ray
    target: Tensor  # [R, 3] the pixel's colour over that background
    jitter: Tensor  # [R] in [0, 1): where the first marching candidate sits


class RaySampler:
    """Draws rays from training images [N, H, W, 4] uint8 RGBA seen by ``cameras`` (poses in
    unit-cube coordinates, on ``device``)."""

    def __init__(self, images: Tensor, cameras: Cameras, device: torch.device | str, *,
                 seed: int = 0, subpixel: bool = False, images_on_host: bool = False):
        self.device = torch.device(device)
        self.cameras = cameras.to(self.device)
        self.subpixel = bool(subpixel)
        if not self.subpixel:
            self.cameras.centre_table()  # a lens is looked up per pixel, not inverted per ray
        self.count, self.height, self.width = (int(s) for s in images.shape[:3])
        self.host_pixels: HostPixels | None = None
        self.notes: list[str] = []
        if images_on_host:
            self.host_pixels = HostPixels(images, self.device, seed)
            self.images = self.host_pixels.images  # the pinned copy only
            if self.host_pixels.note:
                self.notes.append(self.host_pixels.note)
        else:
            self.images = images.to(self.device)  # [N, H, W, 4] uint8

    @property
    def on_host(self) -> bool:
        """Pixels are gathered on the host each step (no CUDA graph can replay that)."""
        return self.host_pixels is not None

    def pixels(self, n_rays: int, generator: torch.Generator | None,
               step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(camera, column, row, RGBA) of ``n_rays`` random training pixels: int64 [R] each and
        uint8 [R, 4], on the device. Drawn from ``generator`` (the default generator when None),
        or on the host from (seed, ``step``) with images on the host."""
        if self.host_pixels is not None:
            return self.host_pixels.draw(n_rays, step)
        dev = self.device
        cam = torch.randint(0, self.count, (n_rays,), generator=generator, device=dev)
        col = torch.randint(0, self.width, (n_rays,), generator=generator, device=dev)
        row = torch.randint(0, self.height, (n_rays,), generator=generator, device=dev)
        return cam, col, row, self.images[cam, row, col]

    def draw(self, n_rays: int, generator: torch.Generator | None, step: int) -> RayBatch:
        """``n_rays`` rays through random training pixels (see the module docstring)."""
        dev = self.device
        cam, col, row, pixels = self.pixels(n_rays, generator, step)
        if self.subpixel:
            sub = torch.rand(n_rays, 2, generator=generator, device=dev)
            px, py = col.float() + sub[:, 0], row.float() + sub[:, 1]
            origins, directions = self.cameras.rays(px, py, cam)
        else:
            origins, directions = self.cameras.centre_rays(col, row, cam)
        rgba = pixels.float() / 255.0  # [R, 4]
        background = torch.rand(n_rays, 3, generator=generator, device=dev)
        alpha = rgba[:, 3:4]
        target = rgba[:, :3] * alpha + background * (1.0 - alpha)  # [R, 3]
        jitter = torch.rand(n_rays, generator=generator, device=dev)
        return RayBatch(origins, directions, background, target, jitter)
