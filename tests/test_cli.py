"""The command line: user mistakes give one clear message and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerfmine.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {"model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
        "occupancy": {"resolution": 32},
        "train": {"target_samples": 2048, "initial_rays": 128},
        "eval": {"max_images": 1}}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "nerfmine.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_missing_data_path(tmp_path):
    _assert_user_error(_run("train", str(tmp_path / "nope"), "--steps", "1", "--output",
                            str(tmp_path / "run")), "nope")


def test_malformed_transforms(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms_train.json").write_text("{ not json")
    _assert_user_error(_run("train", str(scene), "--steps", "1", "--output",
                            str(tmp_path / "run")), "transforms_train.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _assert_user_error(_run("train", "--steps", "1", "--output", str(locked / "run")),
                       "cannot write")


def test_output_that_is_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("")
    _assert_user_error(_run("train", "--steps", "1", "--output", str(target)), "cannot write")


def test_bad_config_override_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"learning_rate": 1}}))
    _assert_user_error(_run("train", "--steps", "1", "--config", str(cfg), "--output",
                            str(tmp_path / "run")), "train.learning_rate")


def test_train_eval_and_resume_from_another_config(tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["train", "--preset", "cpu", "--steps", "3", "--config", str(cfg),
                 "--output", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test PSNR" in out and str(run) in out
    assert main(["eval", str(run), "--no-renders"]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    train_metrics = json.loads((run / "metrics.json").read_text())
    assert evaluated["psnr"] == pytest.approx(train_metrics["psnr"], abs=1e-6)
    # A model change on resume is refused with the field named.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "model": {**TINY["model"], "log2_table_size": 13}}))
    assert main(["train", "--resume", str(run), "--config", str(other), "--steps", "5"]) == 2
    assert "model.log2_table_size" in capsys.readouterr().err
    # Starting a new run over an existing one is refused too.
    assert main(["train", "--steps", "1", "--output", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_eval_of_a_missing_run(tmp_path):
    _assert_user_error(_run("eval", str(tmp_path / "none")), "no such run folder")
    (tmp_path / "empty").mkdir()
    _assert_user_error(_run("eval", str(tmp_path / "empty")), "no checkpoint here")


def test_config_file_that_is_not_an_object(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("[1, 2]")
    _assert_user_error(_run("train", "--steps", "1", "--config", str(cfg), "--output",
                            str(tmp_path / "run")), "expected a JSON object")


def test_bad_numbers_and_merge_inputs(tmp_path):
    _assert_user_error(_run("train", "--steps", "1", "--eval-images", "0", "--output",
                            str(tmp_path / "run")), "eval.max_images (--eval-images)")
    _assert_user_error(_run("bench", "--merge", str(tmp_path / "missing.json"), "--output",
                            str(tmp_path / "b")), "missing.json")
    (tmp_path / "list.json").write_text("[]")
    _assert_user_error(_run("bench", "--merge", str(tmp_path / "list.json"), "--output",
                            str(tmp_path / "b")), "expected a run's metrics.json")
    _assert_user_error(_run("train", "--resume", str(tmp_path / "run"), "--output",
                            str(tmp_path / "x")), "do not apply with --resume")


def test_max_resolution_flag(tmp_path):
    import argparse

    from nerfmine.cli.common import training_overrides

    args = argparse.Namespace(max_resolution=768)
    assert training_overrides(args)["model"] == {"max_resolution": 768}
    assert "model" not in training_overrides(argparse.Namespace())
    _assert_user_error(_run("train", "--steps", "1", "--max-resolution", "4", "--output",
                            str(tmp_path / "run")), "--max-resolution", "16 or more")


def test_a_config_file_of_the_old_layout_is_read_with_a_note(tmp_path, capsys):
    from nerfmine.cli.common import read_config_file

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"train": {"lr": 0.005, "eval_max_images": 1, "max_steps": 2}}))
    overrides = read_config_file(path)
    assert overrides["optim"] == {"lr": 0.005} and overrides["eval"] == {"max_images": 1}
    out = capsys.readouterr().out
    assert "train.lr -> optim.lr" in out and str(path) in out
    path.write_text(json.dumps({"train": {"lr": 0.005}, "optim": {"lr": 0.01}}))
    with pytest.raises(Exception, match="give only optim.lr"):
        read_config_file(path)
