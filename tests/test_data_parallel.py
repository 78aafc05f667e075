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


def test_ranks_with_different_configs_are_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "_data_parallel_worker.py"), str(tmp_path), "mismatch"],
        env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):  # every rank says the same, naming the field and both values
        message = (tmp_path / f"rank{rank}.err").read_text()
        assert "2 training processes were started with different configs or data" in message
        assert "config.model.log2_table_size: rank 0 has 10, rank 1 has 11" in message
        assert "config.model.n_levels" not in message  # only what differs


@pytest.mark.parametrize("world", [1])
def test_exchange_needs_a_process_group(world):
    from nerfmine.distributed import StepExchange

    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        StepExchange()


# ------------------------------------------------------------------ nerfmine train --gpus N
TINY_RUN = {"model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64},
            "occupancy": {"resolution": 16},
            "train": {"target_samples": 2048, "initial_rays": 128, "ray_granularity": 32},
            "march": {"step_size": 0.0541, "max_steps_per_ray": 64},
            "eval": {"max_images": 1}}


def _train(*args, cwd, wait=True):
    command = [sys.executable, "-m", "nerfmine", "train", "--preset", "cpu", "--quiet", *args]
    if not wait:
        return subprocess.Popen(command, env=ENV, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_train_on_two_processes_resumes_on_one_and_back(tmp_path):
    """A 2-process run writes one run folder (rank 0), its checkpoint resumes on 1 process and
    that one's on 2 again, each time to the new budget, with the evaluation points of all."""
    import json

    from nerfmine.checkpoint import load_checkpoint

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_RUN))
    run = tmp_path / "run"
    done = _train("--gpus", "2", "--steps", "6", "--eval-at", "3,6", "--config", str(config),
                  "-o", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rank 0 of 2, 50 of 100 training images, 1024 samples a step" in done.stdout
    assert done.stdout.count("done: 6 steps") == 1  # rank 0 alone reports
    assert load_checkpoint(run / "checkpoint.pt")["world_size"] == 2
    for gpus, steps, points in ((None, 9, [3, 6, 9]), ("2", 12, [3, 6, 9, 12])):
        extra = ["--gpus", gpus] if gpus else []
        again = subprocess.run(
            [sys.executable, "-m", "nerfmine", "train", "--quiet", "--resume", str(run),
             "--steps", str(steps), "--eval-at", ",".join(map(str, points)), *extra],
            env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == steps
        assert [p["step"] for p in metrics["curve"]] == points


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_killed_rank_stops_the_run_with_its_checkpoint_intact(tmp_path):
    """SIGKILL to rank 1 mid-run: torchrun stops rank 0 too, the command says what happened
    and how to continue, and the last checkpoint loads and resumes to the end."""
    import json
    import signal
    import time

    from nerfmine.checkpoint import load_checkpoint

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_RUN, "train": {**TINY_RUN["train"],
                                                        "checkpoint_every": 0.2}}))
    run = tmp_path / "run"
    proc = _train("--gpus", "2", "--steps", "100000", "--eval-at", "100000",
                  "--config", str(config), "-o", str(run), cwd=tmp_path, wait=False)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoint.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(1.0)
        workers = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert workers, "rank 1's process not found"
        os.kill(workers[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:]
    assert "a training process stopped" in out and "--resume" in out
    state = load_checkpoint(run / "checkpoint.pt")
    assert 0 < state["step"] < 100000
    done = subprocess.run(
        [sys.executable, "-m", "nerfmine", "train", "--quiet", "--resume", str(run), "--steps",
         str(state["step"] + 4), "--eval-at", str(state["step"] + 4)],
        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == state["step"] + 4


def test_data_parallel_mistakes_are_named(tmp_path, monkeypatch, capsys):
    from nerfmine.cli import main

    assert main(["train", "--gpus", "0", "--steps", "1"]) == 2
    assert "--gpus must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun starts each rank
    assert main(["train", "--preset", "cpu", "--steps", "1"]) == 2
    assert "needs --output RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--preset", "cpu", "--steps", "1", "-o", str(tmp_path / "r"),
                 "--view"]) == 2
    assert "--view does not apply" in capsys.readouterr().err
