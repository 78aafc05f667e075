"""Whole training steps captured as CUDA graphs, one per static shape, sharing one memory pool.

A training step of nerfmine launches a few hundred small kernels; on an H100/H200 launching
them from Python costs more than running them. :class:`StepGraphs` captures the device part of
a step once per *key* (the host-side sizes the step's shapes depend on: the number of ray slots
and, with mining, the size of the second-pass buffer) and replays it afterwards with a single
launch.

Rules the captured function must follow (``TrainStep.device_step`` does):

- no host synchronisation and no host-side decision that depends on device values;
- every tensor that must outlive a step (parameters, gradients' consumers, optimizer and EMA
  state, miner buffers, statistics) is allocated outside the graph and updated in place;
  everything else it allocates is an intermediate of the step;
- random numbers come from the default CUDA generator, whose offsets CUDA graphs advance
  on each replay (a user-made ``torch.Generator`` is not graph-safe on every torch version).

All graphs share one private memory pool. They never run concurrently, and each graph's
intermediates are dead once it has finished, so the pool holds the largest step's working set
once, not once per graph.

The first time a key is seen the function runs eagerly on a side stream (a real training step,
which also compiles kernels and sets up library workspaces) and is then captured; capturing
does not execute anything. If a capture fails, the object gives up on graphs for good and says
why (``disabled_reason``); the caller then runs its steps eagerly.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch


class StepGraphs:
    def __init__(self, device: torch.device, max_graphs: int = 32):
        self.device = device
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, torch.cuda.CUDAGraph] = OrderedDict()
        self._pool = None
        self._stream: torch.cuda.Stream | None = None
        self.captures = 0
        self.replays = 0
        self.disabled_reason: str | None = None

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    def __len__(self) -> int:
        return len(self._graphs)

    def disable(self, reason: str) -> None:
        """Run every later step eagerly (e.g. to time its stages), saying why."""
        self.disabled_reason = reason
        self._graphs.clear()

    def stats(self) -> dict:
        """Captures, replays and why graphs were given up (None while they are in use)."""
        return {"captures": self.captures, "replays": self.replays,
                "disabled_reason": self.disabled_reason}

    @property
    def stream(self) -> torch.cuda.Stream:
        """The one stream every warm-up and capture runs on. cuBLAS keeps a workspace per stream
        (64 MiB on Hopper) for the life of the process, counted as allocated memory: a new
        stream per key grew the memory with each captured graph."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    @contextlib.contextmanager
    def on_stream(self) -> Iterator[None]:
        """Run the enclosed work on :attr:`stream`, ordered after and before the caller's
        stream; a no-op when the caller already is on it.

        The trainer runs its whole training loop (replays, occupancy updates, evaluations)
        here, so that the process's matrix products use one cuBLAS workspace, not two."""
        stream = self.stream
        current = torch.cuda.current_stream(self.device)
        if current == stream:
            yield
            return
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:
            current.wait_stream(stream)

    def run(self, key: Hashable, fn: Callable[[bool], Any]) -> None:
        """Run ``fn`` for ``key``: replay its graph, or run it eagerly and capture it.

        ``fn(capturing)`` does the step's device work; ``capturing`` is True while it is being
        recorded (it must then not record events or read anything on the host).
        """
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            graph.replay()
            self.replays += 1
            return
        stream = self.stream
        with self.on_stream():
            fn(False)  # this step's real work; compiles kernels, sets up workspaces
        if not self.enabled:
            return
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                fn(True)
        except Exception as exc:  # noqa: BLE001 - fall back to eager steps, say why
            self.disable(f"{type(exc).__name__}: {exc}")
            torch.cuda.synchronize(self.device)
            return
        self.captures += 1
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
