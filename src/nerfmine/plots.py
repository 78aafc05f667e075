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
