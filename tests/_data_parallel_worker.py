"""One rank of the data-parallel equivalence test (tests/test_data_parallel.py), started by
torchrun with the gloo backend: a tiny demo-scene trainer (data-parallel, since it sees the
process group) whose step draws a fixed share of a fixed pool of rays; it saves its weights,
EMA, tau_bar and grid after the steps. Also imported by the test for the one-process run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

POOL, STEPS = 96, 3
TINY = {"model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16, "update_interval": 2, "warmup_steps": 0},
        "march": {"step_size": 3**0.5 / 32, "max_steps_per_ray": 48},
        "eval": {"max_images": 1}}


def trainer_for(run_dir: Path, mining: str, n_rays: int):
    """A trainer whose every step marches ``n_rays`` rays with room for all their samples."""
    from nerfmine.config import make_config, merge_overrides
    from nerfmine.trainer import Trainer

    config = make_config("cpu", merge_overrides(TINY, {
        "mining": mining, "train": {"max_steps": 100, "initial_rays": n_rays,
                                    "max_rays": n_rays, "ray_granularity": 1,
                                    "target_samples": n_rays * 48}}))
    return Trainer(config, run_dir)


def ray_pool(trainer):
    """The same rays in every process: drawn with a fixed generator from all the training
    images (a data-parallel rank's own sampler holds only its shard)."""
    from nerfmine.data.rays import RaySampler

    data = trainer.train_data
    sampler = RaySampler(data.images, trainer.scene.to_unit(data.cameras()), trainer.device)
    return sampler.draw(POOL, torch.Generator().manual_seed(123), step=0)


def take(batch, lo: int, hi: int):
    from dataclasses import replace

    return replace(batch, origins=batch.origins[lo:hi], directions=batch.directions[lo:hi],
                   background=batch.background[lo:hi], target=batch.target[lo:hi],
                   jitter=batch.jitter[lo:hi])


def train(trainer, batch) -> dict:
    """STEPS steps on ``batch`` (every step the same rays); the state to compare."""
    step = trainer.step_fn
    step.rays.draw = lambda n, gen, index: batch
    step.occupancy_generator = torch.Generator().manual_seed(7)  # alike in every process
    for _ in range(STEPS):
        trainer.train_step()
    return {"params": [p.detach().clone() for p in trainer.field.parameters()],
            "ema": [e.clone() for e in trainer.scene.ema],
            "tau_bar": step.miner.tau_bar.clone(),
            "bitfield": trainer.occupancy.bitfield.clone()}


def main(out: str, mining: str) -> None:
    import torch.distributed as dist

    from nerfmine.distributed import StepExchange

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if mining == "mismatch":  # rank 1 started with another table size: every rank refuses
        from nerfmine.errors import ConfigError

        if rank == 1:
            TINY["model"] = {**TINY["model"], "log2_table_size": 11}
        try:
            trainer_for(Path(out) / f"run{rank}", "none", POOL)
        except ConfigError as exc:
            (Path(out) / f"rank{rank}.err").write_text(str(exc))
        dist.destroy_process_group()
        return
    share = POOL // world
    # The trainer sees the process group: it divides the samples and rays per step among the
    # ranks (each marches its share of the pool) and exchanges through nerfmine.distributed.
    trainer = trainer_for(Path(out) / f"run{rank}", mining, POOL)
    assert isinstance(trainer.step_fn.exchange, StepExchange)
    assert trainer.step_fn.ray_count.n_rays == share
    batch = take(ray_pool(trainer), rank * share, (rank + 1) * share)
    torch.save(train(trainer, batch), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
