"""Data-parallel steps (nerfmine.distributed): two CPU processes started by torchrun (gloo),
each stepping on its half of a fixed pool of rays, against one process stepping on the whole
pool. The baseline must give the one process's weights (float tolerance: the gradients are
summed in another order); with mining the ranks' random draws differ from one process's, so
the ranks must agree with each other (weights, EMA, tau_bar, occupancy grid)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")


def _two_ranks(tmp_path, mining):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "_data_parallel_worker.py"), str(tmp_path), mining],
        env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def test_two_ranks_take_the_step_of_one_process_on_the_union(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        import _data_parallel_worker as worker
    finally:
        sys.path.remove(str(HERE))
    ranks = _two_ranks(tmp_path, "none")
    trainer = worker.trainer_for(tmp_path / "one", "none", worker.POOL)
    one = worker.train(trainer, worker.ray_pool(trainer))
    start = [p.detach() for p in worker.trainer_for(tmp_path / "init", "none",
                                                    worker.POOL).field.parameters()]
    for k, (a, b, s) in enumerate(zip(ranks[0]["params"], one["params"], start)):
        assert torch.equal(a, ranks[1]["params"][k])  # the ranks are one model
        assert not torch.equal(b, s)  # the steps moved it
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(ranks[0]["ema"], one["ema"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch.equal(ranks[0]["bitfield"], one["bitfield"])


def test_mining_ranks_stay_one_model(tmp_path):
    ranks = _two_ranks(tmp_path, "hsm")
    for key in ("params", "ema"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), key
    assert torch.equal(ranks[0]["tau_bar"], ranks[1]["tau_bar"])
    assert ranks[0]["tau_bar"].item() != 1.0  # tau_bar moved from its initial value
    assert torch.equal(ranks[0]["bitfield"], ranks[1]["bitfield"])


@pytest.mark.parametrize("world", [1])
def test_exchange_needs_a_process_group(world):
    from nerfmine.distributed import StepExchange

    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        StepExchange()
