"""The CUDA-graph step's device-side logic, run eagerly on the CPU.

On a GPU the training step (nerfmine.train_step) captures ``TrainStep.device_step`` with fixed
ray slots, a device-side ray count and a bucketed mining buffer (nerfmine.graphs). CUDA graphs
themselves need a GPU (benchmarks/gpu_check.py exercises them there); these tests run the same
code path through a stand-in that calls the step function eagerly, and check it against the
ordinary step.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from nerfmine.config import make_config
from nerfmine.miner import BUFFER_MULTIPLE
from nerfmine.train_step import GRAPH_BUFFER_BUCKETS
from nerfmine.trainer import Trainer

# CPU tests wherever they run: they compare the graph path with the eager step on the CPU.
TINY = {"device": "cpu", "backend": "torch",
        "model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
        "occupancy": {"resolution": 32, "update_interval": 4, "warmup_steps": 8},
        "train": {"target_samples": 2048, "initial_rays": 128, "ray_granularity": 32,
                  "checkpoint_every": 1e9, "max_steps": 50},
        "eval": {"max_images": 1}}


class EagerGraphs:
    """Stands in for nerfmine.graphs.StepGraphs: runs the step eagerly, records the keys."""

    enabled = True

    def __init__(self):
        self.keys = []

    def run(self, key, fn):
        self.keys.append(key)
        fn(False)

    def on_stream(self):
        self.stream_entries = getattr(self, "stream_entries", 0) + 1
        return contextlib.nullcontext()


def _trainer(tmp_path, mining, name="run"):
    overrides = json.loads(json.dumps(TINY))
    overrides["mining"] = mining
    trainer = Trainer(make_config("cpu", overrides), tmp_path / name)
    return trainer


@pytest.mark.parametrize("mining", ["none", "hsm"])
def test_graph_path_equals_the_eager_step(tmp_path, mining):
    """With as many ray slots as rays, the graph path's step is the ordinary step."""
    eager = _trainer(tmp_path, mining, "eager")
    graph = _trainer(tmp_path, mining, "graph")
    graph.step_fn.graphs = EagerGraphs()
    assert graph.n_rays == 128 and graph.step_fn.ray_count.slots(bucketed=True) == 128
    # The graph path draws from the default generator: give it the eager run's stream (and
    # leave out the occupancy update, which eagerly draws from the trainer's own generator).
    for t in (eager, graph):
        t.occupancy.should_update = lambda step: False
    torch.manual_seed(1234)
    eager.generator.manual_seed(1234)
    s_eager = eager.train_step()
    s_graph = graph.train_step()
    torch.testing.assert_close(s_graph.loss, s_eager.loss, rtol=1e-6, atol=0)
    assert int(s_graph.n_samples) == int(s_eager.n_samples) > 0
    for (name, p), q in zip(eager.field.named_parameters(), graph.field.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(graph.field.density_w1, _trainer(tmp_path, mining, "x").field.density_w1)
    # The ray count follows the same rule in both paths; a graph step of 128 slots marches
    # the wanted count, at most 128.
    assert graph.n_rays == eager.n_rays
    assert int(graph.step_fn.ray_count.active(128)) == min(eager.n_rays, 128)


@pytest.mark.parametrize("mining", ["none", "hsm"])
def test_graph_path_trains_with_slots_and_buckets(tmp_path, mining):
    trainer = _trainer(tmp_path, mining)
    trainer.step_fn.graphs = graphs = EagerGraphs()
    losses = []
    for step in range(40):
        stats = trainer.train_step()
        losses.append(float(stats.loss))
        if step % 4 == 0:  # the occupancy update, a graph of its own before the step's
            assert graphs.keys[-2] == ("occupancy", step < 8)
        slots = graphs.keys[-1][0]
        assert slots & (slots - 1) == 0 and slots >= trainer.config.train.ray_granularity
        assert 0 < int(trainer.step_fn.ray_count.active(slots)) <= slots
        assert int(stats.n_samples) <= trainer.config.train.target_samples
    assert all(torch.isfinite(torch.tensor(losses)))
    quantum = max(BUFFER_MULTIPLE, 2048 // GRAPH_BUFFER_BUCKETS)
    keys = [key for key in graphs.keys if key[0] != "occupancy"]
    assert len(keys) == 40 and len(graphs.keys) == 50
    sizes = {key[1] for key in keys}
    if mining == "none":
        assert sizes == {None}
    else:
        assert all(size % quantum == 0 or size == 2048 for size in sizes)
        assert 0 < float(stats.hard_fraction) <= 0.5
    # Few distinct graphs over a run: that is what makes capturing them pay.
    assert len(set(keys)) <= 6
    # Every step (its occupancy update included) ran on the graphs' stream.
    assert graphs.stream_entries == 40


def test_inactive_ray_slots_do_not_enter_the_loss(tmp_path):
    """Slots past n_active are not marched and do not count in the mean over rays."""
    trainer = _trainer(tmp_path, "none")
    trainer.step_fn.ray_count.wanted.fill_(0)
    loss, samples, _ = trainer.step_fn.device_step(64, None, 0.0, None)
    assert int(samples.n_samples) == 0 and not samples.ray_valid.any()
    assert float(loss.detach()) == 0.0


def test_lr_schedule_reaches_the_graph_step(tmp_path):
    trainer = _trainer(tmp_path, "none")
    trainer.step_fn.graphs = EagerGraphs()
    trainer.step = 25  # between the first two milestones (0.4 and 0.6 of 50 steps)
    trainer.train_step()
    expected = trainer.config.optim.lr * trainer.config.optim.lr_gamma
    assert float(trainer.step_fn.lr_tensor) == pytest.approx(expected)
    assert trainer.optimizer.param_groups[0]["lr"] is trainer.step_fn.lr_tensor


def test_chunked_second_pass_equals_one_pass(tmp_path):
    """Mining's second pass in chunks of 64 samples gives the step of one pass (the injected
    gradients are fixed by the first pass; the table gradient adds up in its buffer)."""
    overrides = json.loads(json.dumps(TINY))
    overrides["mining"] = "hsm"
    whole = Trainer(make_config("cpu", overrides), tmp_path / "whole")
    overrides["train"]["second_pass_chunk"] = 64
    chunked = Trainer(make_config("cpu", overrides), tmp_path / "chunked")
    for _ in range(3):
        a, b = whole.train_step(), chunked.train_step()
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=0)  # same first pass
    drawn = float(b.hard_fraction) * int(b.n_samples)
    assert drawn > 64  # the second pass ran in several chunks
    for (name, p), q in zip(whole.field.named_parameters(), chunked.field.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    assert whole.field.table.grad is whole.step_fn.table_grad  # the optimizer read the sink
