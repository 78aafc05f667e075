"""instant-ngp's adaptive ray count, kept on the device so that a step needs no host read.

A step marches as many rays as make the target number of samples: ``rays = target / (samples
per ray)``, with samples per ray measured over the last step's kept rays, rounded up to the
granularity and kept in ``[granularity, max_rays]`` (instant-ngp's ``rays *= target /
measured``, written without the previous count, so a lagged measurement cannot make it
oscillate). The rule runs on the device at the end of every step and writes ``wanted``.

A step draws rays into a number of *slots* chosen on the host before it runs, and marches the
first ``min(wanted, slots)`` of them (``active``). The host learns ``wanted`` through a
:class:`~nerfmine.lagged.LaggedHostValue` (at once on a CPU, one or more steps late on a GPU):

- an eager step uses as many slots as the host's value (on a CPU: exactly the wanted rays);
- a step replayed as a CUDA graph uses the next power of two above it, so that a run visits a
  handful of shapes, each captured once.
"""

from __future__ import annotations

import torch

from nerfmine.lagged import LaggedHostValue
from nerfmine.ops.packed import PackedSamples


class RayCount:
    """The ray count rule's device state (``wanted``) and its lagged host copy (``n_rays``)."""

    def __init__(self, target_samples: int, granularity: int, max_rays: int, initial: int,
                 device: torch.device | str):
        self.target_samples = int(target_samples)
        self.granularity = int(granularity)
        self.max_rays = int(max_rays)
        self.wanted = torch.full((), int(initial), dtype=torch.int64, device=device)  # []
        self._host = LaggedHostValue(int(initial), torch.int64)

    @property
    def n_rays(self) -> int:
        """The wanted ray count as the host last received it."""
        return int(self._host.value)

    def slots(self, bucketed: bool) -> int:
        """Ray slots of the next step: the host's ``n_rays``, or with ``bucketed`` (a CUDA-graph
        step) the next power of two above it, within [granularity, max(max_rays,
        granularity)]."""
        n = self.n_rays
        if not bucketed:
            return n
        slots = 1 << max(0, int(n - 1).bit_length())
        return int(min(max(slots, self.granularity), max(self.max_rays, self.granularity)))

    def active(self, slots: int) -> torch.Tensor:
        """[] int64 on the device: the rays a step of ``slots`` slots marches, min(wanted,
        slots). No host read (a CUDA graph bakes ``slots`` in)."""
        return self.wanted.clamp(max=slots)

    @torch.no_grad()
    def update(self, samples: PackedSamples) -> None:
        """The rule on the device, from a step's samples: writes ``wanted`` in place."""
        kept = samples.ray_valid.sum()
        measured = samples.n_samples.double() / kept.clamp(min=1).double()  # samples per ray
        rays = self.target_samples / measured.clamp(min=1.0 / self.max_rays)
        rays = torch.where(samples.n_samples > 0, rays, torch.full_like(rays, self.max_rays))
        rays = torch.ceil(rays / self.granularity) * self.granularity
        self.wanted.copy_(rays.clamp(min=self.granularity, max=self.max_rays).to(torch.int64))

    def publish(self) -> None:
        """After a step (outside any graph capture): start copying ``wanted`` to the host."""
        self._host.issue(self.wanted)

    def load(self, n_rays: int) -> None:
        """Restore a checkpoint's ray count on the device and the host."""
        self.wanted.fill_(int(n_rays))
        self._host.reset(int(n_rays))
