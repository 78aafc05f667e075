"""Rendering whole images from a trained field (no gradients)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nerfmine.cameras import Cameras
from nerfmine.field import NGPField
from nerfmine.ops.composite import composite
from nerfmine.ops.march import march_rays
from nerfmine.ops.rays import ray_aabb
from nerfmine.ops.scene_box import aabb_bounds


@dataclass(frozen=True)
class RenderSettings:
    step_size: float
    max_steps: int
    min_transmittance: float
    rays_per_chunk: int
    samples_per_chunk: int = 1 << 20
    """Network evaluations per batch, which bounds the activation memory."""
    backend: str = "torch"
    aabb_scale: float = 1.0
    """The scene's box 0.5 +- aabb_scale / 2 (the unit cube by default)."""
    cone_angle: float = 0.0
    """0: constant steps; above 0, exponential stepping (see march_rays)."""
    on_batch: Callable[[], None] | None = dataclasses.field(default=None, compare=False)
    """Called after every batch of network evaluations (at most ``samples_per_chunk``): where
    a long render reports progress or stops (the callback raises) without waiting for the
    image to finish."""


@torch.no_grad()
def render_rays(
    field: NGPField,
    occupancy: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    background: torch.Tensor,
    settings: RenderSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Colour [R, 3], opacity [R] and depth [R] of rays in unit-cube coordinates.

    ``occupancy``: the grid's bitfield, [res, res, res] or [K, res, res, res] (cascades)."""
    colours, opacities, depths = [], [], []
    for start in range(0, origins.shape[0], settings.rays_per_chunk):
        stop = start + settings.rays_per_chunk
        rgb, opacity, depth = _render_chunk(field, occupancy, origins[start:stop],
                                            directions[start:stop], background[start:stop],
                                            settings)
        colours.append(rgb)
        opacities.append(opacity)
        depths.append(depth)
    return torch.cat(colours), torch.cat(opacities), torch.cat(depths)


def _render_chunk(field, occupancy, origins, directions, background, settings):
    """March in segments of growing length and retire rays once they are opaque.

    A segment starts where the previous one ended, on the same step grid as one long march
    (candidate k at t_near + (k + 0.5) step), so the samples are those of the training marcher.
    Each segment is composited on its own and chained by the transmittance T accumulated so far.
    Termination inside a segment is tested against the segment's own transmittance, so samples
    past the ray's T < min_transmittance point can still add, together, less than
    min_transmittance of colour; rays stop at the end of the segment in which T drops below it.
    """
    if settings.cone_angle > 0:
        return _render_whole(field, occupancy, origins, directions, background, settings)
    n_rays = origins.shape[0]
    device = origins.device
    step = settings.step_size
    lo, hi = aabb_bounds(settings.aabb_scale)
    t_near, t_far = ray_aabb(origins, directions, origins.new_full((3,), lo),
                             origins.new_full((3,), hi))
    transmittance = torch.ones(n_rays, device=device)  # [R], T before the next segment
    colour = torch.zeros(n_rays, 3, device=device)  # [R, 3]
    depth = torch.zeros(n_rays, device=device)  # [R]
    active = torch.nonzero(t_far > t_near).squeeze(1)  # [A], rays that hit the unit cube
    k0, segment = 0, 32
    while active.numel() > 0 and k0 < settings.max_steps:
        steps = min(segment, settings.max_steps - k0)
        offset = t_near[active] + k0 * step  # [A], where this segment starts
        seg_origins = origins[active] + offset[:, None] * directions[active]
        samples = march_rays(seg_origins, directions[active], occupancy, step_size=step,
                             max_steps=steps, capacity=None, backend=settings.backend,
                             aabb_scale=settings.aabb_scale)
        _add_segment(field, samples, active, transmittance, colour, depth, offset, settings)
        k0 += steps
        alive = (transmittance[active] >= settings.min_transmittance) & (
            t_near[active] + k0 * step < t_far[active])
        active = active[alive]
        segment = min(segment * 2, 256)
    opacity = 1.0 - transmittance
    return colour + transmittance[:, None] * background, opacity, depth


def _add_segment(field, samples, active, transmittance, colour, depth, depth_offset,
                 settings) -> None:
    """Composite one segment of the ``active`` rays over black and chain it onto their running
    colour, depth and transmittance (in place). ``depth_offset`` [A]: where the segment's t
    starts along the ray (None: t is already measured from the ray's origin)."""
    raw = _evaluate(field, samples, settings)  # [S, 4]
    zeros = torch.zeros(active.numel(), 3, device=colour.device)
    seg_rgb, seg_opacity, seg_depth = composite(
        raw, samples, zeros, backend=settings.backend,
        min_transmittance=settings.min_transmittance)
    if depth_offset is not None:
        seg_depth = seg_depth + seg_opacity * depth_offset
    t_run = transmittance[active]  # [A]
    colour[active] += t_run[:, None] * seg_rgb
    depth[active] += t_run * seg_depth
    transmittance[active] = t_run * (1.0 - seg_opacity)


def _evaluate(field, samples, settings) -> torch.Tensor:
    """Raw network outputs of every sample, in batches of samples_per_chunk. # [S, 4]"""
    n = samples.positions.shape[0]
    raw = torch.empty(n, 4, device=samples.positions.device, dtype=torch.float32)  # [S, 4]
    for s0 in range(0, n, settings.samples_per_chunk):
        s1 = min(n, s0 + settings.samples_per_chunk)
        raw[s0:s1] = field(samples.positions[s0:s1], samples.directions[s0:s1])
        if settings.on_batch is not None:
            settings.on_batch()
    return raw


def _render_whole(field, occupancy, origins, directions, background, settings):
    """Exponential stepping, in segments of growing sample counts that retire opaque rays.

    The first segment starts each ray's candidates as the training marcher does (no jitter); a
    ray whose segment was full continues at ``ray_next``, the candidate after its last sample,
    so the samples are those of one march of at most ``max_steps`` samples. Segments are
    chained by transmittance as in :func:`_render_chunk`.
    """
    n_rays = origins.shape[0]
    device = origins.device
    transmittance = torch.ones(n_rays, device=device)  # [R]
    colour = torch.zeros(n_rays, 3, device=device)  # [R, 3]
    depth = torch.zeros(n_rays, device=device)  # [R]
    k_next = torch.zeros(n_rays, dtype=torch.int64, device=device)  # [R], where rays resume
    active = torch.arange(n_rays, device=device)  # [A]
    k0, segment = 0, 32
    while active.numel() > 0 and k0 < settings.max_steps:
        steps = min(segment, settings.max_steps - k0)
        samples = march_rays(origins[active], directions[active], occupancy,
                             step_size=settings.step_size, max_steps=steps, capacity=None,
                             backend=settings.backend, aabb_scale=settings.aabb_scale,
                             cone_angle=settings.cone_angle, k_start=k_next[active])
        # t is measured from the rays' own origins: no depth offset.
        _add_segment(field, samples, active, transmittance, colour, depth, None, settings)
        counts = samples.ray_counts  # [A]
        k_next[active] = samples.ray_next
        k0 += steps
        alive = (counts == steps) & (transmittance[active] >= settings.min_transmittance)
        active = active[alive]
        segment = min(segment * 2, 256)
    opacity = 1.0 - transmittance
    return colour + transmittance[:, None] * background, opacity, depth


@torch.no_grad()
def render_image(
    field: NGPField,
    occupancy: torch.Tensor,
    cameras: Cameras,
    index: int,
    background: tuple[float, float, float],
    settings: RenderSettings,
) -> dict[str, torch.Tensor]:
    """Render camera ``index`` of ``cameras`` (poses in unit-cube coordinates, any lens model)
    at every pixel centre.

    Returns "rgb" [H, W, 3], "opacity" [H, W] and "depth" [H, W] (distance along the ray in
    unit-cube units).
    """
    height, width = cameras.height, cameras.width
    origins, directions = cameras.image_rays(index)  # [H*W, 3] each
    bg = torch.tensor(background, dtype=torch.float32, device=origins.device)
    bg = bg.expand(origins.shape[0], 3)
    rgb, opacity, depth = render_rays(field, occupancy, origins, directions, bg, settings)
    return {
        "rgb": rgb.view(height, width, 3),
        "opacity": opacity.view(height, width),
        "depth": depth.view(height, width),
    }
