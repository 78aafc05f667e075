"""Plots of a run's progress (matplotlib, without a display)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from nerfmine.run_folder import atomic_write_bytes


def plot_psnr_curve(curve: list[dict[str, Any]], path: Path, title: str = "",
                    others: dict[str, list[dict[str, Any]]] | None = None,
                    x: str = "clock", metric: str = "psnr") -> None:
    """Test PSNR (or another curve ``metric``: "iou" for an SDF) against training time
    (x="clock") or steps (x="step"); ``others`` adds named curves to the same axes
    (side-by-side benchmarks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {title or "run": curve, **(others or {})}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in series.items():
        if not points:
            continue
        xs = [p[x] for p in points]
        ys = [p[metric] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("training clock (s)" if x == "clock" else "training steps")
    ax.set_ylabel({"psnr": "test PSNR (dB)", "iou": "IoU"}.get(metric, metric))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_meshes(meshes: dict[str, tuple[Any, Any]], path: Path, title: str = "",
                views: tuple[tuple[float, float], ...] = ((15.0, -60.0), (15.0, 30.0))) -> None:
    """Triangle meshes side by side (one column each, labelled by its key), flat-shaded from
    one light and seen from each of ``views`` (elevation, azimuth in degrees; one row each),
    with +y up as OBJ and PLY files have it, all in the first mesh's bounding box so that the
    columns compare. Each mesh is ``(vertices [V, 3], faces [F, 3])``; matplotlib draws its
    faces back to front, about a second per 100,000 on a CPU core."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    first = np.asarray(next(iter(meshes.values()))[0], dtype=np.float64)
    lo, hi = first.min(axis=0), first.max(axis=0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    light = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])
    fig = plt.figure(figsize=(3.2 * len(meshes), 3.2 * len(views)), dpi=120)
    for row, (elev, azim) in enumerate(views):
        for col, (label, (vertices, faces)) in enumerate(meshes.items()):
            ax = fig.add_subplot(len(views), len(meshes), row * len(meshes) + col + 1,
                                 projection="3d")
            tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # [F, 3, 3]
            normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
            shade = 0.25 + 0.75 * np.clip(normal @ light, 0.0, 1.0)  # [F]
            ax.add_collection3d(Poly3DCollection(tri, facecolors=np.repeat(shade[:, None], 3, 1),
                                                 edgecolors="none"))
            for axis, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
                set_lim(centre[axis] - half, centre[axis] + half)
            ax.set_box_aspect((1, 1, 1))
            ax.view_init(elev=elev, azim=azim, vertical_axis="y")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"{label} ({len(faces)} triangles)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
