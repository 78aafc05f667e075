"""What a run promises its user, proved by injecting the faults (docs/design.md, "Robustness"):
one writer per run folder, a full disk that loses nothing, NaN/inf steps that change no weight,
signals inside evaluations, and training processes killed (SIGKILL) at random moments and at
the worst ones (halfway through a checkpoint, a render, metrics.json; inside an evaluation),
then resumed, in a loop.

The kill-and-resume loop runs NERFMINE_KILL_CYCLES cycles (default 5 in the suite); set
NERFMINE_ROBUSTNESS_REPORT=path.json to write what each cycle saw (BENCHMARKS.md quotes it):
    NERFMINE_KILL_CYCLES=60 NERFMINE_ROBUSTNESS_REPORT=benchmarks/results/kill_resume_cpu.json \\
        python -m pytest -q tests/test_robustness.py -k kill
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_trainer import SRC, TINY

from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from nerfmine.errors import ConfigError, OutputError, TrainingInterrupted, TrainingStopped
from nerfmine.run_folder import RunLock
from nerfmine.trainer import Trainer

ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _config(mining: str, **train):
    """The tiny test config on the demo scene at 25x25 pixels: evaluating a field a few steps
    old, whose occupancy grid is still nearly full, is the slow part of these tests."""
    from nerfmine.config import make_config

    overrides = json.loads(json.dumps(TINY))
    overrides["mining"] = mining
    overrides["train"].update(train)
    overrides["data"] = {"downscale": 4}
    return make_config("cpu", overrides)


# --------------------------------------------------------------------------- one writer
def test_a_second_run_on_the_same_folder_refuses_and_writes_nothing(tmp_path):
    """A run folder held by another process (a real one, killed later with SIGKILL) is refused
    with a message naming the holder; nothing is written; once the holder dies the folder is
    free again (the operating system drops the lock of a dead process)."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nerfmine.run_folder import RunLock; "
         f"lock = RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"in use by pid {holder.pid}.*another --output"):
            Trainer(_config("none", max_steps=2), run).train()
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    Trainer(_config("none", max_steps=2), run).train()
    assert (run / "metrics.json").is_file()
    with RunLock(run):  # released by the finished run
        pass


# --------------------------------------------------------------------------- atomic files
def test_an_atomic_write_is_whole_or_absent_and_made_like_open(tmp_path):
    from nerfmine.run_folder import atomic_write, atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode  # not mkstemp's private 0o600

    def fails(handle):
        handle.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"metrics.json: the disk is full.*intact"):
        atomic_write(target, fails)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "plain.txt"]


def test_stale_temporaries_are_removed_from_the_run_folder_and_its_subfolders(tmp_path):
    from nerfmine.run_folder import remove_stale_temporaries

    renders = tmp_path / "renders" / "test"
    renders.mkdir(parents=True)
    stale = [tmp_path / "checkpoint.pt.k2j1x.tmp", renders / "r_0.png.4pti_f1u.tmp"]
    kept = [tmp_path / "notes.tmp", renders / "r_0.png", tmp_path / "config.json"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# --------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("fault", ["ENOSPC", "zip writer"])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(fault, tmp_path, monkeypatch):
    """The disk fills up while a checkpoint is written: the run stops with an OutputError that
    says so, the previous checkpoint is byte-for-byte intact and loadable, no temporary file
    is left. torch's zip writer reports a full disk only as "file write failed": the message
    then rests on the free space left (patched here to 1 MiB)."""
    import shutil
    from collections import namedtuple

    run = tmp_path / "run"
    Trainer(_config("none", max_steps=2), run).train()
    before = (run / CHECKPOINT_NAME).read_bytes()

    def full(obj, handle):
        handle.write(b"\0" * 4096)  # some bytes reach the temporary file first
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . file write failed")

    monkeypatch.setattr(torch, "save", full)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(2**30, 2**30 - 2**20, 2**20))
    trainer = Trainer.resume(run, {"train": {"max_steps": 4}})
    with pytest.raises(OutputError, match="disk is full") as info:
        trainer.train()
    assert str(run / CHECKPOINT_NAME) in str(info.value) and "intact" in str(info.value)
    assert (run / CHECKPOINT_NAME).read_bytes() == before
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == 2
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    Trainer.resume(run, {"train": {"max_steps": 4}}).train()  # space again: it goes on
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


# --------------------------------------------------------------------------- NaN and inf
def _poison_gradients(trainer: Trainer, bad_calls: set[int]) -> list[int]:
    """Make the gradients of the step_fn's ``bad_calls``-th optimizer steps (0-based) NaN or
    inf; returns the list of calls made so far."""
    scaler = trainer.step_fn.scaler
    real, calls = scaler.unscale_, []

    def unscale_(params):
        if len(calls) in bad_calls:
            grads = [p.grad for p in params if p.grad is not None]
            grads[0].view(-1)[0] = float("nan") if len(calls) % 2 else float("inf")
        calls.append(len(calls))
        return real(params)

    scaler.unscale_ = unscale_
    return calls


def test_a_nonfinite_step_changes_no_weight_and_is_counted(tmp_path):
    trainer = Trainer(_config("hsm", max_steps=8), tmp_path / "run")
    _poison_gradients(trainer, {2, 3, 6})
    for _ in range(2):
        trainer.train_step()
    weights = [p.detach().clone() for p in trainer.field.parameters()]
    adam = {k: v.clone() for k, v in trainer.step_fn.optimizer.state_dict()["state"][0].items()
            if torch.is_tensor(v)}
    for _ in range(2):
        trainer.train_step()  # both skipped
    for before, p in zip(weights, trainer.field.parameters()):
        assert torch.equal(before, p)
    for key, value in trainer.step_fn.optimizer.state_dict()["state"][0].items():
        if key in adam:
            assert torch.equal(adam[key], value), key
    assert int(trainer.step_fn.nonfinite_streak) == 2
    trainer.train_step()  # a good one moves the weights again and ends the streak
    assert any(not torch.equal(b, p) for b, p in zip(weights, trainer.field.parameters()))
    assert int(trainer.step_fn.nonfinite_streak) == 0
    metrics = trainer.train()  # steps 5..8, one of them bad
    assert metrics["nonfinite_steps"] == 3
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["nonfinite_steps"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.field.parameters())
    assert all(torch.isfinite(e).all() for e in trainer.ema)


def test_a_long_streak_of_nonfinite_steps_stops_with_a_good_checkpoint(tmp_path, monkeypatch):
    """MAX_NONFINITE_STREAK steps in a row with NaN/inf gradients stop the run with
    TrainingStopped after a checkpoint that holds the weights from before the streak (the
    limit is lowered to 6 here: the rule, not the number, is under test)."""
    import nerfmine.trainer

    monkeypatch.setattr(nerfmine.trainer, "MAX_NONFINITE_STREAK", 6)
    run = tmp_path / "run"
    trainer = Trainer(_config("none", max_steps=100_000), run)
    for _ in range(3):
        trainer.train_step()
    good = [p.detach().clone() for p in trainer.field.parameters()]
    _poison_gradients(trainer, set(range(10**6)))  # every step from now on
    with pytest.raises(TrainingStopped, match=r"NaN or inf gradients.*--lr"):
        trainer.train()
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] >= 3 + 6
    assert int(state["nonfinite"]["streak"]) == state["step"] - 3
    resumed = Trainer.resume(run)
    for before, p in zip(good, resumed.field.parameters()):
        assert torch.equal(before, p)  # the weights from before the streak


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("which", ["final", "intermediate"])
def test_a_signal_during_an_evaluation_checkpoints_and_resume_finishes(which, tmp_path):
    """SIGINT arrives while an evaluation renders: it stops between network batches, the run
    checkpoints and raises TrainingInterrupted; the resumed run does the evaluation it missed
    (an intermediate one first thing) and finishes with the same curve points as a run that
    was never interrupted."""
    run = tmp_path / "run"
    trainer = Trainer(_config("none", max_steps=4, eval_at=[2]), run)
    target = 4 if which == "final" else 2
    sent = []

    def hook(info):
        if info.get("event") == "eval_progress" and info["step"] == target and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    trainer.hooks.progress.append(hook)
    with pytest.raises(TrainingInterrupted, match="final evaluation" if which == "final"
                       else "during training"):
        trainer.train()
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == target
    assert not (run / "metrics.json").exists()
    metrics = Trainer.resume(run).train()
    assert metrics["steps"] == 4
    assert [c["step"] for c in metrics["curve"]] == [2, 4]


def test_too_small_evaluation_images_fail_before_training(tmp_path):
    """SSIM needs 11x11 pixels: a split of smaller images is refused before the first step
    (it used to crash after training, without a checkpoint)."""
    overrides = json.loads(json.dumps(TINY))
    overrides["train"]["max_steps"] = 2
    overrides["data"] = {"downscale": 10}  # the 100 px demo images become 10 px
    from nerfmine.config import make_config

    trainer = Trainer(make_config("cpu", overrides), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"10x10 pixels.*11x11.*smaller --downscale"):
        trainer.train()
    assert trainer.step == 0 and not (tmp_path / "run" / CHECKPOINT_NAME).exists()


# --------------------------------------------------------------------------- kill and resume
CHILD = textwrap.dedent('''
    """One life of a training run: start or resume, maybe die (SIGKILL) on purpose."""
    import io, json, os, random, signal, sys, threading
    from pathlib import Path

    import nerfmine.checkpoint as checkpoint
    import nerfmine.run_folder as run_folder
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    run, mode, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    overrides = json.loads(sys.argv[4])
    rng = random.Random(seed)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    # Every file of a run folder goes through run_folder.atomic_write: "write:.SUFFIX" kills
    # the process halfway through writing the temporary file of its k-th file of that suffix.
    real_write, writes = run_folder.atomic_write, {}
    kill_at = rng.randint(1, 3)

    def atomic_write(path, write):
        path = Path(path)
        writes[path.suffix] = writes.get(path.suffix, 0) + 1
        if mode.startswith("write:") and path.suffix == mode[6:] and writes[path.suffix] >= kill_at:
            def half(handle):
                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                print("dying in write", path.name, flush=True)
                die()
            return real_write(path, half)
        return real_write(path, write)

    run_folder.atomic_write = atomic_write
    checkpoint.atomic_write = atomic_write

    if (run / "checkpoint.pt").exists():
        trainer = Trainer.resume(run)
    else:
        trainer = Trainer(make_config("cpu", overrides), run)
    print("start", trainer.step, flush=True)
    real_step, real_save = trainer.train_step, trainer.save

    # "timer" kills at a random moment after a random number of steps of this life (a step,
    # a checkpoint, an evaluation or a plot may be under way)
    die_after = rng.randint(1, 8) if mode == "timer" else None
    done = []

    def train_step():
        out = real_step()
        print("step", trainer.step, flush=True)
        done.append(1)
        if len(done) == die_after:
            threading.Timer(rng.uniform(0.0, 1.5), die).start()
        return out

    def save():
        path = real_save()
        print("saved", trainer.step, flush=True)
        return path

    trainer.train_step, trainer.save = train_step, save
    if mode == "eval":
        def hook(info):
            if info.get("event") == "eval_progress" and rng.random() < 0.5:
                print("dying in eval at", info["step"], flush=True)
                die()
        trainer.hooks.progress.append(hook)
    trainer.train()
    print("finished", trainer.step, flush=True)
''')

MODES = ["write:.pt", "timer", "eval", "write:.png", "write:.json", "timer"]


def _check_run_folder(run: Path) -> int | None:
    """Every file a reader could open is whole: the checkpoint loads (its hash checked),
    metrics.json and config.json parse, every render decodes. Returns the checkpoint's step."""
    from PIL import Image

    for name in ("config.json", "metrics.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    for png in run.rglob("*.png"):
        with Image.open(png) as image:
            image.load()
    if not (run / CHECKPOINT_NAME).exists():
        return None
    return int(load_checkpoint(run / CHECKPOINT_NAME)["step"])


def _check_finished(run: Path, budget: int) -> None:
    """A run that went through kills and resumes ends like one that never stopped."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == budget and [c["step"] for c in metrics["curve"]] == [8, 16, 24]
    assert not list(run.rglob("*.tmp"))
    assert len(list((run / "renders" / "test").glob("*.png"))) == 2


def test_killed_runs_always_resume_and_lose_at_most_one_checkpoint_interval(tmp_path):
    cycles = int(os.environ.get("NERFMINE_KILL_CYCLES", "5"))
    budget = 24
    overrides = json.loads(json.dumps(TINY))
    overrides["train"].update(max_steps=budget, eval_at=[8, 16], checkpoint_every=0.3)
    overrides["eval"]["max_images"] = 2
    overrides["data"] = {"downscale": 4}  # 25x25 images: evaluations of a young field are slow
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(20)
    report, checkpoint_step, max_gap, finished = [], None, 0, 0
    run = tmp_path / "run0"
    for cycle in range(cycles + 1):
        last = cycle == cycles
        mode = "none" if last else MODES[cycle % len(MODES)]
        if not last and mode != "timer" and rng.random() < 0.3:
            mode = "timer"
        seed = rng.randrange(2**31)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), str(run), mode, str(seed),
                               json.dumps(overrides)], env=ENV, capture_output=True, text=True,
                              timeout=600)
        lines = [line.split() for line in proc.stdout.splitlines()]
        steps = [int(w[1]) for w in lines if w[0] == "step"]
        saves = [int(w[1]) for w in lines if w[0] == "saved"]
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, (mode, proc.returncode, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        start = [int(w[1]) for w in lines if w[0] == "start"]
        if checkpoint_step is not None and start:
            assert start[0] == checkpoint_step  # resumed from the last good checkpoint
        step_now = _check_run_folder(run)
        if saves:
            # the last completed save is what a resume finds (or a newer one that completed
            # just before the kill, before its "saved" line was printed)
            assert step_now is not None and step_now >= saves[-1]
            assert step_now == saves[-1] or step_now in steps
        elif checkpoint_step is not None:
            assert step_now == checkpoint_step  # nothing was saved: the old one is untouched
        reached = max(steps + start + [0])
        marks = start[:1] + saves
        max_gap = max([max_gap] + [b - a for a, b in zip(marks, marks[1:])])
        report.append({"cycle": cycle, "run": run.name, "mode": mode, "killed": killed,
                       "died": next((" ".join(w) for w in lines if w[0] == "dying"), None),
                       "checkpoint_before": checkpoint_step, "reached_step": reached,
                       "checkpoint_after": step_now,
                       "lost_steps": reached - (step_now or 0),
                       "seconds": round(time.perf_counter() - started, 2)})
        checkpoint_step = step_now
        if not killed:
            assert "finished" in proc.stdout
            _check_finished(run, budget)
            finished += 1
            if cycles - cycle >= 3:  # a fresh run folder for the next kills (a finished run
                run = tmp_path / f"run{finished}"  # resumes straight to its final evaluation)
                checkpoint_step = None
    out = os.environ.get("NERFMINE_ROBUSTNESS_REPORT")
    if out:
        kills = [r for r in report if r["killed"]]
        from nerfmine.provenance import device_name, git_commit

        summary = {"device": device_name(torch.device("cpu")), "commit": git_commit(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "command": "NERFMINE_KILL_CYCLES=N NERFMINE_ROBUSTNESS_REPORT=... python -m "
                              "pytest tests/test_robustness.py -k killed",
                   "cycles": len(report), "kills": len(kills), "runs_finished": finished,
                   "kills_by_mode": {m: sum(r["mode"] == m for r in kills)
                                     for m in sorted({r["mode"] for r in kills})},
                   "max_lost_steps": max((r["lost_steps"] for r in kills), default=0),
                   "checkpoint_every_s": 0.3, "budget_steps": budget,
                   "max_steps_between_saves": max_gap,
                   "resumes_failed": 0, "cycles_detail": report}
        Path(out).write_text(json.dumps(summary, indent=2) + "\n")
