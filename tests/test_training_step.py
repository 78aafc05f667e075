"""The mining step against the baseline step, on small random scenes (CPU, float64)."""

from __future__ import annotations

import pytest
import torch

from nerfmine.config import make_config
from nerfmine.field import ModelConfig, NGPField
from nerfmine.miner import HardSampleMiner, MinerConfig
from nerfmine.ops.composite import composite, composite_output_grads
from nerfmine.ops.march import march_rays

SMALL_MODEL = ModelConfig(n_levels=4, log2_table_size=10, base_resolution=4, max_resolution=64,
                          hidden_dim=16, geo_feature_dim=8)


def _scene(n_rays: int, capacity: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    origins = torch.rand(n_rays, 3, generator=gen) * 0.2 + torch.tensor([0.4, 0.4, -0.5])
    directions = torch.tensor([0.0, 0.0, 1.0]) + 0.3 * (torch.rand(n_rays, 3, generator=gen) - 0.5)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    occupancy = torch.rand(8, 8, 8, generator=gen) < 0.6
    samples = march_rays(origins, directions, occupancy, step_size=0.05, max_steps=40,
                         capacity=capacity, jitter=torch.rand(n_rays, generator=gen))
    background = torch.rand(n_rays, 3, generator=gen, dtype=dtype)
    target = torch.rand(n_rays, 3, generator=gen, dtype=dtype)
    return samples, background, target


def _field(seed=0):
    field = NGPField(SMALL_MODEL, seed=seed).double()
    with torch.no_grad():  # larger table values than the 1e-4 init, so every path matters
        field.table.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed + 1))
    return field


def _baseline_grads(field, samples, background, target):
    field.zero_grad(set_to_none=True)
    raw = field(samples.positions.double(), samples.directions.double()).double()
    rgb, _, _ = composite(raw, samples, background)
    n_valid = samples.ray_valid.sum().clamp(min=1)
    loss = (((rgb - target) ** 2).mean(-1) * samples.ray_valid).sum() / n_valid
    loss.backward()
    return [p.grad.clone() for p in field.parameters()]


def test_all_samples_selected_matches_baseline_gradients():
    """With the cap lifted (fractions 1.0) and every sample drawn, injecting the cached output
    gradients gives exactly the baseline's parameter gradients (float64)."""
    samples, background, target = _scene(n_rays=23, capacity=2048, seed=3)
    assert int(samples.n_samples) > 100 and bool(samples.ray_valid.all())
    field = _field()
    expected = _baseline_grads(field, samples, background, target)

    field.zero_grad(set_to_none=True)
    with torch.no_grad():
        raw_all = field(samples.positions.double(), samples.directions.double()).double()
    _, grad_raw = composite_output_grads(raw_all, samples, background, target)
    miner = HardSampleMiner(MinerConfig(min_fraction=1.0, max_fraction=1.0))
    mined = miner.mine(grad_raw, samples.n_samples, samples.capacity,
                       torch.Generator().manual_seed(0))
    nonzero = int((mined.importance > 0).sum())
    assert int(mined.b) == nonzero  # every sample that has a gradient at all
    n_valid = samples.ray_valid.sum().clamp(min=1)
    raw_hard = field(samples.positions[mined.indices].double(),
                     samples.directions[mined.indices].double()).double()
    raw_hard.backward(gradient=mined.injected_grads(grad_raw, 1.0 / n_valid.double()))
    for name_param, want in zip(field.named_parameters(), expected):
        name, param = name_param
        torch.testing.assert_close(param.grad, want, rtol=1e-9, atol=1e-12, msg=name)


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while fn runs; each storage once,
    parameters left out."""
    seen: dict[int, int] = {}
    params: set[int] = set()

    def pack(tensor):
        if isinstance(tensor, torch.nn.Parameter) or tensor.untyped_storage().data_ptr() in params:
            return tensor
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    def run(field):
        params.update(p.untyped_storage().data_ptr() for p in field.parameters())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()

    return run, seen


def test_mining_graph_is_about_a_quarter_of_the_baseline():
    samples, background, target = _scene(n_rays=64, capacity=4096, seed=5, dtype=torch.float32)
    field = NGPField(SMALL_MODEL, seed=0)

    def baseline():
        raw = field(samples.positions, samples.directions)
        rgb, _, _ = composite(raw, samples, background)
        return ((rgb - target) ** 2).mean()

    run, seen_base = _saved_bytes(baseline)
    run(field)
    base_bytes = sum(seen_base.values())

    with torch.no_grad():
        raw_all = field(samples.positions, samples.directions)
    _, grad_raw = composite_output_grads(raw_all, samples, background, target)
    miner = HardSampleMiner(MinerConfig(min_fraction=0.25, max_fraction=0.25))
    mined = miner.mine(grad_raw, samples.n_samples, samples.capacity,
                       torch.Generator().manual_seed(0))
    assert mined.indices.shape[0] == samples.capacity // 4

    def hard_pass():
        return field(samples.positions[mined.indices], samples.directions[mined.indices])

    run, seen_hard = _saved_bytes(hard_pass)
    run(field)
    hard_bytes = sum(seen_hard.values())
    ratio = hard_bytes / base_bytes
    assert 0.15 < ratio < 0.3, (hard_bytes, base_bytes)


def test_every_ray_empty_skips_the_step_cleanly(tmp_path):
    config = make_config("cpu", {"train": {"max_steps": 5}, "model": {
        "log2_table_size": 10, "n_levels": 4, "max_resolution": 64}})
    from nerfmine.trainer import Trainer

    trainer = Trainer(config, tmp_path)
    trainer.occupancy.bitfield.zero_()  # nothing occupied: every ray is empty
    trainer.occupancy.should_update = lambda step: False
    before = [p.detach().clone() for p in trainer.field.parameters()]
    stats = trainer.train_step()
    assert int(stats.n_samples) == 0
    assert torch.isfinite(stats.loss)
    for p, b in zip(trainer.field.parameters(), before):
        assert torch.equal(p, b)
    for e in trainer.ema:
        assert torch.isfinite(e).all()


@pytest.mark.parametrize("mining", ["none", "hsm"])
def test_train_step_reduces_loss_on_a_fixed_batch(mining, tmp_path):
    """A sanity check of the whole step: 60 steps lower the loss of one fixed batch of the demo
    scene's training rays (drawn once; the steps themselves draw random batches)."""
    config = make_config("cpu", {"mining": mining, "train": {"max_steps": 100}, "model": {
        "log2_table_size": 12}})
    from nerfmine.trainer import Trainer

    trainer = Trainer(config, tmp_path)
    batch = trainer.step_fn.rays.draw(256, torch.Generator().manual_seed(123), step=0)
    origins, directions, background, target, jitter = (
        batch.origins, batch.directions, batch.background, batch.target, batch.jitter)

    @torch.no_grad()
    def batch_loss() -> float:
        m = trainer.config.march
        samples = march_rays(origins, directions, trainer.occupancy.bitfield,
                             step_size=m.step_size, max_steps=m.max_steps_per_ray,
                             capacity=256 * m.max_steps_per_ray, jitter=jitter)  # every ray fits
        raw = trainer.field(samples.positions, samples.directions)
        rgb, _, _ = composite(raw, samples, background, backend=trainer.backend)
        assert bool(samples.ray_valid.all())
        return float(((rgb - target) ** 2).mean())

    before = batch_loss()
    for _ in range(60):
        trainer.train_step()
    assert batch_loss() < 0.75 * before
