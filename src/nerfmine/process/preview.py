"""A picture to check a processed scene before training: the cameras as frustums and the
sparse points, seen from above and from the side, with the box the field models.

The COLMAP world has no up axis, so "up" is the mean of the cameras' up vectors (a capture is
mostly taken with the camera upright; instant-ngp's colmap2nerf levels scenes the same way), and
the horizontal axes follow the cameras' spread. Everything is drawn in nerfmine's normalised
world (cameras within radius 1 of the origin), where the modelled box is the cube of half-size
``aabb_scale / (2 * scale)`` around ``(0.5 - offset) / scale``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nerfmine.run_folder import atomic_write_bytes

# Points drawn at most (a random subset beyond that: the picture stays light and quick).
MAX_POINTS = 20_000
# Frustum depth as a share of the cameras' radius (1 in the normalised world).
FRUSTUM_DEPTH = 0.12
# The 12 edges of a box, as index pairs into its corners ordered by bits (x, y, z).
_EDGES = [(a, b) for a in range(8) for b in range(8) if a < b and bin(a ^ b).count("1") == 1]


def view_axes(c2w: np.ndarray) -> np.ndarray:
    """[3, 3] rows (horizontal 1, horizontal 2, up) of the viewing frame of OpenGL poses
    ``c2w`` [N, 4, 4]: up is the mean camera up vector; horizontal 1 the direction, across up,
    in which the camera centres spread most."""
    up = c2w[:, :3, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    up = up / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
    centres = c2w[:, :3, 3] - c2w[:, :3, 3].mean(axis=0)
    flat = centres - np.outer(centres @ up, up)  # [N, 3] across up
    helper = np.eye(3)[np.argmin(np.abs(up))]
    first = np.cross(up, helper)
    if len(flat) > 1 and np.linalg.norm(flat) > 1e-9:
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        if np.linalg.norm(np.cross(vt[0], up)) > 1e-6:
            first = vt[0] - (vt[0] @ up) * up
    first = first / np.linalg.norm(first)
    return np.stack([first, np.cross(up, first), up])


def frustum_segments(c2w: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                     depth: float) -> np.ndarray:
    """[N, 8, 2, 3] line segments of each camera's frustum (apex to the 4 image corners at
    ``depth``, and the image rectangle) in world coordinates."""
    fx, fy, cx, cy = (intrinsics[:, k, None] for k in range(4))  # [N, 1]
    us = np.array([0.0, width, width, 0.0])
    vs = np.array([0.0, 0.0, height, height])
    corners = np.stack([(us - cx) / fx * depth, -(vs - cy) / fy * depth,
                        np.full((len(c2w), 4), -depth)], axis=-1)  # [N, 4, 3] OpenGL camera
    world = np.einsum("nij,nkj->nki", c2w[:, :3, :3], corners) + c2w[:, None, :3, 3]
    apex = np.broadcast_to(c2w[:, None, :3, 3], world.shape)
    rim = np.roll(world, -1, axis=1)
    return np.concatenate([np.stack([apex, world], axis=2), np.stack([world, rim], axis=2)],
                          axis=1)


def box_corners(aabb_scale: float, scale: float, offset) -> np.ndarray:
    """[8, 3] corners of the modelled box in world coordinates (ordered by bits x, y, z)."""
    centre = (0.5 - np.asarray(offset, dtype=np.float64)) / scale
    half = aabb_scale / (2.0 * scale)
    bits = np.array([[(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1] for k in range(8)])
    return centre + (bits * 2.0 - 1.0) * half


def draw_cameras(path: Path, c2w: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                 points: np.ndarray, aabb_scale: float, scale: float, offset,
                 title: str) -> None:
    """Write the PNG ``path`` (atomically): top and side views of the cameras ``c2w``
    [N, 4, 4] (OpenGL), their ``intrinsics`` [N, 4], the sparse ``points`` [P, 3] and the
    modelled box."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    axes = view_axes(c2w)
    segments = frustum_segments(c2w, intrinsics, width, height, FRUSTUM_DEPTH) @ axes.T
    corners = box_corners(aabb_scale, scale, offset) @ axes.T  # [8, 3] in view axes
    if len(points) > MAX_POINTS:
        points = points[np.random.default_rng(0).choice(len(points), MAX_POINTS,
                                                        replace=False)]
    shown = points @ axes.T  # [P, 3]
    reach = np.abs(corners).max() * 1.08

    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    for k, (name, (a, b)) in enumerate((("from above", (0, 1)), ("from the side", (0, 2)))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.scatter(shown[:, a], shown[:, b], s=0.6, c="0.45", linewidths=0,
                   label=f"{len(points)} sparse points" if k == 0 else None)
        ax.add_collection(LineCollection(segments[..., [a, b]].reshape(-1, 2, 2),
                                         colors="tab:red", linewidths=0.7))
        ax.plot(*(c2w[:, :3, 3] @ axes.T)[:, [a, b]].T, ".", color="tab:red", ms=2,
                label=f"{len(c2w)} cameras" if k == 0 else None)
        box = LineCollection([corners[[i, j]][:, [a, b]] for i, j in _EDGES],
                             colors="tab:blue", linewidths=1.0, linestyles="--")
        ax.add_collection(box)
        ax.plot([], [], "--", color="tab:blue", label=f"modelled box (aabb_scale {aabb_scale:g})"
                if k == 0 else None)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xlabel("horizontal (camera spread)")
        ax.set_ylabel("horizontal" if k == 0 else "up (mean camera up)")
        ax.grid(True, alpha=0.25)
    fig.legend(loc="lower center", ncol=3, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
