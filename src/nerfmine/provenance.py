"""Where a figure comes from: the device's name and the code's commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def device_name(device: torch.device | str) -> str:
    """nvidia-smi style GPU name on CUDA, else the CPU's description."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    """Commit of the nerfmine source tree (with '-dirty' when it has uncommitted changes)."""
    if os.environ.get("NERFMINE_COMMIT"):  # a copy of the tree without its .git (device runs)
        return os.environ["NERFMINE_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
