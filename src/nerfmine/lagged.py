"""A device scalar read on the host one or more steps late, without a synchronisation.

A training step must not wait for the GPU, yet the host needs a few device values to choose
shapes (the ray slots of the next step, the mining buffer's size). :class:`LaggedHostValue`
copies such a value into pinned host memory with a non-blocking copy, records a CUDA event,
and picks the copy up once the event says it has landed (``event.query()`` never blocks). One
copy is in flight at a time: while it has not landed, new requests are skipped, so a host that
runs ahead of the GPU still receives values. On a CPU the value is read directly (a plain
memory read, no device involved).
"""

from __future__ import annotations

import torch


class LaggedHostValue:
    """The last value of a 0-dim device tensor that reached the host (``value``)."""

    def __init__(self, initial: float | int, dtype: torch.dtype):
        self.dtype = dtype
        self._value = initial
        self._buf: torch.Tensor | None = None  # [] pinned host memory
        self._event: torch.cuda.Event | None = None

    @property
    def value(self) -> float | int:
        """The newest value that has landed (polls the copy in flight first)."""
        self.poll()
        return self._value

    def reset(self, value: float | int) -> None:
        """Forget any copy in flight and take ``value`` (after loading a checkpoint)."""
        self._event = None
        self._value = value

    def poll(self) -> bool:
        """Take the copy in flight if it has landed; True when none is in flight afterwards."""
        if self._event is None:
            return True
        if not self._event.query():
            return False
        assert self._buf is not None
        self._value = self._buf.numpy().item()
        self._event = None
        return True

    def issue(self, tensor: torch.Tensor) -> None:
        """Start copying ``tensor`` ([] on its device) to the host, unless a copy is in flight.

        On a CPU the value is taken at once. On CUDA the copy is enqueued on the current
        stream after the work that writes ``tensor``; it must not be called while a CUDA graph
        is being captured (event records and host copies cannot be captured).
        """
        tensor = tensor.detach()
        if tensor.device.type == "cpu":
            self._value = tensor.numpy().item()  # a plain memory read, no device involved
            return
        if tensor.device.type != "cuda":  # other accelerators: no event API assumed
            self._value = tensor.cpu().item()
            return
        if not self.poll():
            return  # the previous copy has not landed: keep waiting for it
        if self._buf is None:
            self._buf = torch.empty((), dtype=self.dtype, pin_memory=True)
        self._buf.copy_(tensor, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
