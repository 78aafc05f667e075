"""Training images kept in host memory (``--images-on-host``), streamed to the device per step.

The images stay on the host (pinned on CUDA, so copies can overlap with the device's work).
Each step draws its pixel indices on the host, gathers those pixels there and copies the indices
and the pixels to the device with ``non_blocking=True``: a few MiB per step instead of the whole
data set on the device.

The indices come from a CPU generator reseeded at every step from (run seed, step): the draws
are deterministic, and a resumed run draws what the uninterrupted run would have drawn without
the generator's state in the checkpoint (the step counter is checkpointed already).
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for (seed, step): splitmix64 of the pair, so neighbouring steps get
    unrelated streams."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(step) + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


class HostPixels:
    """A split's images [N, H, W, 4] uint8 on the host; draws and gathers a step's pixels."""

    def __init__(self, images: torch.Tensor, device: torch.device | str, seed: int):
        if images.device.type != "cpu":
            raise ValueError(f"HostPixels needs images in host memory, got {images.device}")
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.note: str | None = None
        if self.pin:
            try:
                images = images.pin_memory()
            except RuntimeError as exc:  # e.g. the OS limits page-locked memory
                self.note = (f"could not pin the training images in host memory ({exc}); "
                             "the per-step copies are synchronous")
                self.pin = False
        self.images = images.contiguous()
        self.count, self.height, self.width = (int(s) for s in self.images.shape[:3])
        self._flat = self.images.view(-1, self.images.shape[-1])  # [N*H*W, 4]
        self.seed = int(seed)
        self.generator = torch.Generator("cpu")

    def draw(self, n_rays: int, step: int) -> tuple[torch.Tensor, ...]:
        """(cam, col, row, rgba) on the device for ``n_rays`` random pixels of ``step``:
        int64 [R] each and uint8 [R, 4]."""
        gen = self.generator
        gen.manual_seed(step_seed(self.seed, step))
        cam = torch.randint(0, self.count, (n_rays,), generator=gen)
        col = torch.randint(0, self.width, (n_rays,), generator=gen)
        row = torch.randint(0, self.height, (n_rays,), generator=gen)
        return self.gather(cam, col, row)

    def gather(self, cam: torch.Tensor, col: torch.Tensor,
               row: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gather pixels (cam, row, col) (host int64 [R]) on the host and copy them and their
        indices to the device without blocking; returns (cam, col, row, rgba) there."""
        n = int(cam.shape[0])
        flat = (cam * self.height + row) * self.width + col  # [R]
        pixels = torch.empty((n, self._flat.shape[1]), dtype=torch.uint8, pin_memory=self.pin)
        torch.index_select(self._flat, 0, flat, out=pixels)  # [R, 4]
        index = torch.empty((3, n), dtype=torch.int64, pin_memory=self.pin)
        torch.stack((cam, col, row), out=index)  # [3, R]
        # Pinned sources: the copies are asynchronous, and the caching host allocator does not
        # hand these buffers out again before the copies that read them have finished.
        index = index.to(self.device, non_blocking=True)
        pixels = pixels.to(self.device, non_blocking=True)
        return index[0], index[1], index[2], pixels
