"""The single-task primitives' time budget and evaluation times (nerfmine.fit_loop.FitLoop in
time mode, ``--seconds`` and ``--eval-at``): where the run stops, where the points fall, resume.

The loop's exact arithmetic is tested with a fake clock that advances a fixed 1/64 s per
training step (a binary fraction, so that sums are exact) and jumps 100 s per evaluation: the
budget and the points must then fall on known steps, and the evaluations must stay off the
training clock. One test runs on the real clock and asserts only what the loop guarantees
whatever the machine's speed (the clock reaches the budget; points at or past their time, in
order), never a wall-clock duration.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.errors import ConfigError, TrainingInterrupted

TICK = 1 / 64  # fake seconds per training step


def _checkerboard(path, size=16):
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 4 + xx // 4) % 2).astype(np.uint8) * 200 + 20
    Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1)).save(path)
    return path


def _config(**values):
    from nerfmine.image.config import make_config

    tiny = {"device": "cpu", "pixels_per_step": 64, "log2_table_size": 8, "n_levels": 4,
            "render_tile": 256, "steps": 1000}
    return make_config("cpu", {**tiny, **values})


def _fake_clock(fit, on_step=None):
    """The fit's clock advances TICK per training step and 100 s per evaluation (which the
    training clock must not see); ``on_step(step)`` runs inside each step."""
    now = [0.0]
    train_step, evaluate = fit.train_step, fit._evaluate_point

    def step():
        now[0] += TICK
        out = train_step()
        if on_step is not None:
            on_step(fit.step)
        return out

    def evaluation():
        now[0] += 100.0
        return evaluate()

    fit.clock_source = lambda: now[0]
    fit.train_step, fit._evaluate_point = step, evaluation
    return fit


def _points(curve):
    return [(p["eval_at"], p["clock"], p["step"]) for p in curve]


def _new_fit(tmp_path, name, **values):
    from nerfmine.image.fit import ImageFit

    image = _checkerboard(tmp_path / "board.png")
    return ImageFit.create(_config(**values), image, tmp_path / name)


def test_budget_and_points_fall_on_their_steps_and_evaluations_stay_off_the_clock(tmp_path):
    fit = _fake_clock(_new_fit(tmp_path, "run", seconds=1.0, eval_at=(0.5, 0.25, 1.0)))
    metrics = fit.train()
    # 1 s at 1/64 s a step is 64 steps exactly; the points at 16, 32 and 64 steps, once each.
    assert fit.step == 64 and fit.clock == 1.0 and metrics["training_seconds"] == 1.0
    assert _points(metrics["curve"]) == [([0.25], 0.25, 16), ([0.5], 0.5, 32), ([1.0], 1.0, 64)]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["seconds"] == 1.0 and saved["eval_at"] == [0.25, 0.5, 1.0]


def test_the_clock_passes_a_target_by_at_most_one_chunk_when_steps_slow_down(tmp_path):
    """Steps 8x slower from step 20 on: the pace of the chunk before misleads the next one,
    which still ends within CHUNK_STEPS slow steps of the target; later chunks use the new
    pace and pass the budget by less than one step."""
    from nerfmine.fit_loop import CHUNK_STEPS

    fit = _new_fit(tmp_path, "run", seconds=2.0, eval_at=(0.5,))
    slow = 8 * TICK
    now = [0.0]
    train_step = fit.train_step

    def step():
        now[0] += TICK if fit.step < 20 else slow
        return train_step()

    fit.clock_source, fit.train_step = (lambda: now[0]), step
    metrics = fit.train()
    (point,) = [p for p in metrics["curve"] if p["eval_at"]]
    assert point["eval_at"] == [0.5] and 0.5 <= point["clock"] <= 0.5 + CHUNK_STEPS * slow
    assert 2.0 <= fit.clock < 2.0 + slow


def test_steps_stay_an_upper_bound(tmp_path):
    fit = _fake_clock(_new_fit(tmp_path, "run", steps=10, seconds=1.0, eval_at=(0.5,)))
    metrics = fit.train()
    assert fit.step == 10 and fit.clock == 10 * TICK
    # The 0.5 s point is never reached; the end's point stands for no eval_at point.
    assert _points(metrics["curve"]) == [([], 10 * TICK, 10)]


def test_step_mode_is_unchanged(tmp_path):
    fit = _new_fit(tmp_path, "run", steps=6, eval_every=3)
    metrics = fit.train()
    assert [p["step"] for p in metrics["curve"]] == [3, 6]
    assert all(set(p) == {"clock", "step", "psnr", "loss", "hard_fraction"}
               for p in metrics["curve"])


def test_real_clock_reaches_the_budget_with_points_in_order(tmp_path):
    fit = _new_fit(tmp_path, "run", seconds=0.4, eval_at=(0.1, 0.2))
    metrics = fit.train()
    assert fit.clock >= 0.4 and fit.step < fit.config.steps
    points = [p for p in metrics["curve"] if p["eval_at"]]
    assert [p["eval_at"] for p in points] == [[0.1], [0.2]]
    assert points[0]["clock"] >= 0.1 and points[1]["clock"] >= 0.2
    assert points[0]["step"] < points[1]["step"] <= metrics["curve"][-1]["step"] == fit.step


def test_resume_keeps_the_points_and_evaluates_one_passed_while_stopping(tmp_path):
    """A SIGINT inside the step that passes 0.3 s (step 20): the run stops before evaluating
    that point; the resumed run evaluates it at once (at its actual clock) and then goes on
    as if never stopped: no point twice, the weights of the straight run."""
    from nerfmine.image.fit import ImageFit

    values = {"seconds": 1.0, "eval_at": (0.25, 0.3, 1.0)}
    straight = _fake_clock(_new_fit(tmp_path, "a", **values))
    straight.train()

    def interrupt(step):
        if step == 20:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = _fake_clock(_new_fit(tmp_path, "b", **values), on_step=interrupt)
    with pytest.raises(TrainingInterrupted):
        stopped.train()
    resumed = _fake_clock(ImageFit.resume(tmp_path / "b"))
    assert resumed.step == 20 and resumed.pending_points() == [0.3, 1.0]
    metrics = resumed.train()
    assert _points(metrics["curve"]) == [([0.25], 0.25, 16), ([0.3], 20 * TICK, 20),
                                         ([1.0], 1.0, 64)]
    assert _points(straight.curve) == _points(metrics["curve"])
    for name, value in straight.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[name]), name


def test_resume_with_a_longer_budget_and_points_behind_the_clock(tmp_path):
    from nerfmine.image.fit import ImageFit

    fit = _fake_clock(_new_fit(tmp_path, "run", seconds=0.5, eval_at=(0.25,)))
    fit.train()
    with pytest.raises(ConfigError, match=r"--eval-at 0\.1: .* already at 0\.5 s"):
        ImageFit.resume(tmp_path / "run", {"eval_at": (0.1, 0.25, 1.0), "seconds": 1.0})
    resumed = _fake_clock(ImageFit.resume(tmp_path / "run",
                                          {"eval_at": (0.25, 0.75, 1.0), "seconds": 1.0}))
    metrics = resumed.train()
    assert [p["eval_at"] for p in metrics["curve"]] == [[0.25], [], [0.75], [1.0]]
    assert resumed.step == 64 and resumed.clock == 1.0


@pytest.mark.parametrize("values, match", [
    ({"seconds": 0}, "seconds must be a positive"),
    ({"seconds": float("nan")}, "seconds must be a positive"),
    ({"eval_at": (1, -2)}, "eval_at points must be positive"),
    ({"eval_at": ("soon",)}, "eval_at must be a list of seconds"),
    ({"seconds": 10, "eval_at": (5, 15, 20)}, r"point\(s\) 15, 20 lie beyond the time budget"),
])
def test_bad_budgets_are_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        _config(**values)


def test_eval_at_is_sorted_and_survives_the_json_round_trip():
    from nerfmine.image.config import ImageConfig
    from nerfmine.sdf.config import make_config as sdf_config

    config = _config(eval_at=[15, 1, 5, 5], seconds=15)
    assert config.eval_at == (1.0, 5.0, 15.0)
    assert ImageConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert sdf_config("cpu", {"eval_at": [30, 10]}).eval_at == (10.0, 30.0)


# ------------------------------------------------------------------------- command line


def test_cli_parses_seconds_and_eval_at(tmp_path, capsys):
    from nerfmine.cli import build_parser, main
    from nerfmine.fit_config import STEPS_WITHOUT_LIMIT

    parser = build_parser()
    args = parser.parse_args(["image", "x.png", "--seconds", "60", "--eval-at", "15,1, 5,60"])
    assert args.seconds == 60.0 and args.eval_at == (1.0, 5.0, 15.0, 60.0)
    for flags, message in ((["--eval-at", "1,x"], "comma-separated numbers"),
                           (["--eval-at", "0,5"], "positive seconds"),
                           (["--eval-at", ","], "expected seconds"),
                           (["--seconds", "-1"], "positive number of seconds"),
                           (["--seconds", "soon"], "number of seconds")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["sdf", "m.obj", *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, flags

    image = _checkerboard(tmp_path / "board.png")
    run = tmp_path / "run"
    assert main(["image", str(image), "-o", str(run), "--preset", "cpu", "--device", "cpu",
                 "--seconds", "0.3", "--eval-at", "0.2,0.1", "--pixels-per-step", "64",
                 "--log2-table-size", "8"]) == 0
    assert "(point 0.1 s)" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == STEPS_WITHOUT_LIMIT and config["eval_at"] == [0.1, 0.2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [p["eval_at"] for p in metrics["curve"]][:2] == [[0.1], [0.2]]
    assert metrics["training_seconds"] >= 0.3
    # A beyond-the-budget point is a user error, named, with exit status 2.
    assert main(["image", str(image), "-o", str(tmp_path / "other"), "--preset", "cpu",
                 "--device", "cpu", "--seconds", "1", "--eval-at", "2"]) == 2
    assert "lie beyond the time budget" in capsys.readouterr().err


def test_sdf_cli_takes_a_time_budget(tmp_path, capsys):
    trimesh = pytest.importorskip("trimesh")
    pytest.importorskip("igl", reason="pip install 'nerfmine[sdf]'")
    from nerfmine.cli import main

    mesh = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=2).export(mesh)
    run = tmp_path / "run"
    assert main(["sdf", str(mesh), "-o", str(run), "--preset", "cpu", "--device", "cpu",
                 "--seconds", "0.3", "--eval-at", "0.1", "--samples-per-step", "256",
                 "--pool-size", "4096", "--iou-points", "4096", "--log2-table-size", "10",
                 "--mesh-resolution", "8", "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training_seconds"] >= 0.3 and metrics["curve"][0]["eval_at"] == [0.1]
    assert metrics["curve"][0]["clock"] >= 0.1
