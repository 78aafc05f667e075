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

:class:`StepExchange` is used by :class:`nerfmine.train_step.TrainStep` when given one;
:class:`Ranks` is how :class:`nerfmine.trainer.Trainer` runs under torchrun (``nerfmine train
--gpus N``): image shards, per-rank ray streams, rank 0's clock and decisions.
"""

from __future__ import annotations

import torch

# Tensors at least this large are all-reduced by themselves (a copy into a flat buffer would
# cost more than the launch it saves).
_IN_PLACE_NUMEL = 1 << 16


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
        """All-reduce (sum) ``tensors`` in place: a large contiguous one (the table's gradient,
        2^19 x 16 x 2 fp32 values, 64 MiB) by itself, without a copy; the small ones in one
        flat buffer per dtype, one collective each."""
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            if t.is_contiguous() and t.numel() >= _IN_PLACE_NUMEL:
                dist.all_reduce(t, group=self.group)
            else:
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


# --------------------------------------------------------------------------- a run's ranks
RAY_SEED_STRIDE = 1_000_003
"""Rank ``r`` draws its rays from seed ``seed + r * RAY_SEED_STRIDE`` (distinct streams); the
occupancy generator uses ``seed`` on every rank."""


class Ranks:
    """The processes of one data-parallel run: ``rank`` of ``world`` (0 of 1 without a
    process group), the :class:`StepExchange` between them, and the agreement each training
    step starts with (rank 0's clock, and whether any rank got a stop signal), so that every
    rank takes the same decisions (budget, evaluation points, checkpoints, stop)."""

    def __init__(self, exchange: StepExchange | None = None) -> None:
        self.exchange = exchange
        self.rank = exchange.rank if exchange else 0
        self.world = exchange.world if exchange else 1

    @classmethod
    def current(cls) -> Ranks:
        """The initialised default process group's ranks (torchrun), else one process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(StepExchange())
        return cls()

    @property
    def several(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that evaluates, checkpoints and writes the run folder."""
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """This rank's training images of ``count``: every ``world``-th from ``rank``."""
        return list(range(self.rank, count, self.world))

    def agree(self, clock: float, stop: bool, device: torch.device) -> tuple[float, bool]:
        """Rank 0's clock and whether any rank wants to stop (one small all-reduce)."""
        if not self.several:
            return clock, stop
        import torch.distributed as dist

        values = torch.tensor([clock if self.leader else -1.0, 1.0 if stop else 0.0],
                              dtype=torch.float64, device=self._collective_device(device))
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return float(values[0]), bool(values[1] > 0)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's (the weights every rank starts from)."""
        if not self.several:
            return
        import torch.distributed as dist

        with torch.no_grad():  # weights are leaves of the autograd graph: not an op of it
            for t in tensors:
                dist.broadcast(t.detach(), src=0)

    def check_same(self, what: str, values: dict) -> None:
        """Raise :class:`~nerfmine.errors.ConfigError` on every rank unless every rank passes
        the same ``values`` (a JSON-like dict, e.g. the run's config): the fields that differ
        from rank 0's are named with each rank's value. Ranks started by one torchrun command
        agree; ranks of several commands, or on several machines whose files differ, may not,
        and a run of ranks that disagree would train nothing sensible without saying so."""
        if not self.several:
            return
        import torch.distributed as dist

        from nerfmine.errors import ConfigError

        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, _flatten(values))
        problems = []
        for rank, other in enumerate(gathered[1:], start=1):
            for key in sorted(set(gathered[0]) | set(other)):
                mine, theirs = gathered[0].get(key), other.get(key)
                if mine != theirs:
                    problems.append(f"{key}: rank 0 has {mine!r}, rank {rank} has {theirs!r}")
        if problems:
            raise ConfigError(
                f"the {self.world} training processes were started with different {what}:\n  "
                + "\n  ".join(problems[:20])
                + ("\n  ..." if len(problems) > 20 else "")
                + "\nStart every rank with the same command, config file and data.")

    def barrier(self) -> None:
        if self.several:
            import torch.distributed as dist

            dist.barrier()

    @staticmethod
    def _collective_device(device: torch.device) -> torch.device:
        """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
        import torch.distributed as dist

        return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _flatten(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples as lists (as JSON has them)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def start_process_group() -> None:
    """Join torchrun's process group (NCCL with CUDA GPUs, else gloo), each rank on GPU
    ``LOCAL_RANK``; a collective may wait as long as rank 0's evaluations take."""
    import datetime
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    if cuda and not dist.is_nccl_available():
        from nerfmine.errors import NerfmineError

        raise NerfmineError("data-parallel training on GPUs needs NCCL, which this PyTorch "
                            f"build ({torch.__version__}) lacks: install a CUDA build of "
                            "PyTorch from pytorch.org (Linux wheels include NCCL), or train on "
                            "one GPU without --gpus.")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
