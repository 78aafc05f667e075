"""The whole training step with backend="triton" against backend="torch", from one state."""

from __future__ import annotations

import pytest
import torch

from nerfmine.config import make_config
from nerfmine.trainer import Trainer

# Eager steps in both (on a GPU the triton backend would otherwise replay CUDA graphs, whose
# random numbers come from the default CUDA generator instead of the run's generator).
SMALL = {"model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64},
         "occupancy": {"resolution": 16},
         "train": {"max_steps": 5, "target_samples": 512, "initial_rays": 32,
                   "cuda_graphs": False}}


def _trainer(backend, mining, device, tmp_path, **extra):
    values = {"backend": backend, "mining": mining, "device": device, **SMALL, **extra}
    return Trainer(make_config("cpu", values), tmp_path / backend)


# The two backends' miners draw from different random streams; with every sample of nonzero
# importance drawn (b = B, capped at the nonzero count) the draw is the same set in both.
EVERY_SAMPLE = {"miner": {"min_fraction": 1.0, "max_fraction": 1.0}}


@pytest.mark.parametrize("mining", ["none", "hsm"])
def test_first_step_matches_reference(mining, device, tmp_path):
    extra = EVERY_SAMPLE if mining == "hsm" else {}
    ref = _trainer("torch", mining, device, tmp_path, **extra)
    fast = _trainer("triton", mining, device, tmp_path, **extra)
    init = [p.detach().clone() for p in ref.field.parameters()]
    for p, q in zip(init, fast.field.parameters()):
        assert torch.equal(p, q)  # one seed, one initial state
    ref_stats, fast_stats = ref.train_step(), fast.train_step()
    # Same rays and samples: the marchers are bit-identical.
    assert int(ref_stats.n_samples) == int(fast_stats.n_samples) > 0
    # The Triton hash grid reads an fp16 copy of the table: a relative 1e-3 on the loss.
    torch.testing.assert_close(fast_stats.loss, ref_stats.loss, rtol=1e-3, atol=1e-6)
    # Adam's first update is about -lr * sign(gradient): the two updates must agree in sign
    # wherever the reference moved a parameter by a visible amount.
    for (name, a), b, p0 in zip(ref.field.named_parameters(), fast.field.parameters(), init):
        da, db = (a.detach() - p0).flatten(), (b.detach() - p0).flatten()
        moved = da.abs() > 1e-3
        assert moved.sum() > 0, name
        agree = (torch.sign(da[moved]) == torch.sign(db[moved])).float().mean()
        assert agree > 0.97, (name, float(agree))
