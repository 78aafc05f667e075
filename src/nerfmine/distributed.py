"""What a data-parallel training step shares across processes (torch.distributed: NCCL between
GPUs, gloo between CPU processes), so that the ranks of one run stay one model.

A rank draws its own rays, marches and runs its passes on them, and then:

- the count of valid rays is summed over ranks *before* the loss, so every rank divides its
  rays' squared errors by the union's count: the summed gradients are then exactly those of one
  process taking the union of the ranks' rays (same loss, same normalisation);
- the table's and the MLPs' gradients (and the step's loss, for the statistics) are summed
  before Adam, so every rank takes the same optimizer step from the same weights;
- with mining, ``tau_bar`` is averaged over ranks after each step: each rank's EMA moved from
  the same value by its own batch's ``tau``, so the average is the EMA of the ranks' mean
  ``tau``, and every rank draws ``b = B_rank / tau_bar`` from the same ``tau_bar``.

The occupancy grid needs no exchange: every rank updates it from the same weights with a
generator seeded alike on every rank (``TrainStep.occupancy_generator``), which gives the same
cells, positions and densities, so the grids stay identical.

:class:`StepExchange` is used by :class:`nerfmine.train_step.TrainStep` when given one; the
trainer does not start data-parallel runs yet (issue 18).
"""

from __future__ import annotations

import torch


class StepExchange:
    """Sums and averages over the ranks of ``group`` (the default process group if None),
    which must be initialised (``torch.distributed.init_process_group``)."""

    def __init__(self, group=None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("StepExchange needs an initialised torch.distributed process "
                               "group (start the processes with torchrun)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce (sum) ``tensors`` in place: one flat buffer per dtype, one collective
        each (the table's gradient dominates: 2^19 x 16 x 2 fp32 values, 64 MiB)."""
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            if len(group) == 1 and group[0].is_contiguous():
                dist.all_reduce(group[0], group=self.group)
                continue
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def mean_(self, tensor: torch.Tensor) -> None:
        """All-reduce ``tensor`` to its mean over ranks, in place."""
        self.sum_([tensor])
        tensor.div_(self.world)
