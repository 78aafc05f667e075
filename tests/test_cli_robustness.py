"""The command line's robustness: ``--help`` without torch, bench's warning about arms that ran
too few steps to compare, and ``nerfmine eval`` of a read-only run."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nerfmine.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600)


# --------------------------------------------------------------------------- --help, no torch
HELP_SCRIPT = r"""
import contextlib, io, json, sys
from nerfmine.cli import COMMANDS, build_parser, main

build_parser()
cases = [["--help"], [], ["no-such-command"]]
cases += [[name, "--help"] for name in COMMANDS]
cases += [[name, "--no-such-flag"] for name in COMMANDS]
seen = {}
for argv in cases:
    code = None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    seen[" ".join(argv) or "(none)"] = {"exit": code, "torch": "torch" in sys.modules}
print(json.dumps(seen))
"""


def test_help_and_argument_errors_import_no_torch():
    result = _python("-c", HELP_SCRIPT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    from nerfmine.cli import COMMANDS

    assert len(seen) == 3 + 2 * len(COMMANDS) and len(COMMANDS) >= 7, seen
    for argv, what in seen.items():
        assert not what["torch"], f"nerfmine {argv} imported torch"
        expected = 0 if argv.endswith("--help") else 2
        assert what["exit"] == expected, (argv, what)


def test_python_m_nerfmine_help_imports_no_torch():
    """The real entry point (``python -m nerfmine``, i.e. nerfmine/__main__.py)."""
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"]):
        result = _python("-X", "importtime", "-m", "nerfmine", *argv)
        assert result.returncode == 0, result.stderr
        assert "usage: nerfmine" in result.stdout
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "nerfmine.cli" in imported  # the import log is there
        assert "torch" not in imported, argv


def test_constants_repeated_for_the_parser_stay_equal():
    """cli/export.py and cli/common.py state a few values so that the parser imports no torch;
    they must match the modules they come from."""
    from nerfmine import export
    from nerfmine.cli import common
    from nerfmine.cli import export as export_cli
    from nerfmine.config import PRESETS
    from nerfmine.field import ModelConfig

    for name in ("DEFAULT_RESOLUTION", "DEFAULT_THRESHOLD", "MAX_RESOLUTION"):
        assert getattr(export_cli, name) == getattr(export, name), name
    assert set(common.PRESET_MAX_RESOLUTION) == set(PRESETS)
    for preset, stated in common.PRESET_MAX_RESOLUTION.items():
        actual = PRESETS[preset].get("model", {}).get("max_resolution",
                                                      ModelConfig().max_resolution)
        assert stated == actual, preset


def test_max_resolution_help_states_both_presets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2048, instant-ngp's, with --preset gpu and 512 with --preset cpu" in text


# --------------------------------------------------------------------------- bench: too few steps
def _metrics(mining: str, steps: int) -> dict:
    curve = [{"clock": 2.0, "step": steps, "psnr": 12.0 + (mining == "hsm"), "ssim": 0.5}]
    return {"mining": mining, "steps": steps, "curve": curve, "psnr": curve[-1]["psnr"],
            "ssim": 0.5, "steps_per_second": steps / 2.0,
            "mean_hard_fraction": 0.3 if mining == "hsm" else None}


def test_few_steps_warnings_name_each_short_arm():
    from nerfmine.bench import MIN_COMPARABLE_STEPS, few_steps_warnings

    assert MIN_COMPARABLE_STEPS == 100
    warnings = few_steps_warnings({"arm mining=none": {"steps": 2},
                                   "arm mining=hsm": {"steps": MIN_COMPARABLE_STEPS},
                                   "arm without steps": {}})
    assert len(warnings) == 1
    assert "arm mining=none ran only 2 training steps" in warnings[0]
    assert "not meaningful" in warnings[0] and "--seconds" in warnings[0]
    assert "1 training step " in few_steps_warnings({"x": {"steps": 1}})[0]
    assert few_steps_warnings({"x": {"steps": 5}}, min_steps=5) == []


def test_bench_report_and_summary_warn_of_an_arm_with_few_steps(tmp_path, capsys):
    """Through ``--merge``, which shares the report and the printing with a bench that trains
    both arms."""
    (tmp_path / "none.json").write_text(json.dumps(_metrics("none", 2)))
    (tmp_path / "hsm.json").write_text(json.dumps(_metrics("hsm", 150)))
    out = tmp_path / "out"
    assert main(["bench", "--merge", str(tmp_path / "none.json"), str(tmp_path / "hsm.json"),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert len(report["warnings"]) == 1
    assert "mining=none ran only 2 training steps" in report["warnings"][0]
    assert f"WARNING: {report['warnings'][0]}" in printed
    assert "mining=hsm" not in report["warnings"][0]

    # Enough steps on both arms: no warning.
    (tmp_path / "none.json").write_text(json.dumps(_metrics("none", 120)))
    assert main(["bench", "--merge", str(tmp_path / "none.json"), str(tmp_path / "hsm.json"),
                 "--output", str(tmp_path / "out2")]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out2" / "bench.json").read_text())["warnings"] == []


def test_bench_command_warns_when_an_arm_ran_few_steps(tmp_path, capsys, monkeypatch):
    """The bench command's own training path and the several-seeds path, with the training
    replaced by metrics of a 3-step run (a real one is in tests/test_bench.py)."""
    import nerfmine.bench as bench

    def fake_run_arm(arm, overrides, preset, out_dir, progress=None, warm_steps=0):
        return _metrics(arm, 3 if arm == "none" else 400)

    monkeypatch.setattr(bench, "run_arm", fake_run_arm)
    out = tmp_path / "one"
    assert main(["bench", "--preset", "cpu", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    warnings = json.loads((out / "bench.json").read_text())["warnings"]
    assert len(warnings) == 1 and "mining=none ran only 3 training steps" in warnings[0]
    assert printed.count("WARNING:") == 1

    out = tmp_path / "suite"
    assert main(["bench", "--preset", "cpu", "--seeds", "0,1", "--output", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    warnings = json.loads((out / "bench.json").read_text())["warnings"]
    assert len(warnings) == 2
    assert all("arm mining=none ran only 3 training steps" in w for w in warnings)
    assert "demo, seed 0" in warnings[0] and "demo, seed 1" in warnings[1]
    table = (out / "bench_table.md").read_text()
    assert table.count("**Warning:**") == 2
    assert printed.count("**Warning:**") == 2  # the printed table carries them


# --------------------------------------------------------------------------- eval, read-only runs
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import torch

    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("robust") / "run"
    config = make_config("cpu", {
        "model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16},
        "train": {"max_steps": 2, "target_samples": 1024, "initial_rays": 64},
        "march": {"max_steps_per_ray": 128, "step_size": math.sqrt(3) / 128},
        "eval": {"max_images": 1, "save_renders": False},
    })
    Trainer(config, run).train()
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run that a test may make read-only; writable again afterwards so
    that pytest can remove it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    yield run
    for folder, _, files in os.walk(run):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refuse_temporaries_in(monkeypatch, folder: Path) -> None:
    """Make ``folder`` (and what is inside it) unwritable for files made as temporaries, as a
    read-only disk would (as root, chmod cannot)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _spy_on_evaluations(monkeypatch) -> list:
    from nerfmine.evaluator import Evaluator

    calls = []
    real = Evaluator.evaluate

    def evaluate(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    return calls


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_eval_of_a_read_only_run_folder(run_copy, tmp_path, capsys):
    before = _listing(run_copy)
    for folder, _, files in os.walk(run_copy):
        os.chmod(folder, 0o555)
        for name in files:
            os.chmod(Path(folder) / name, 0o444)
    assert main(["eval", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert str(run_copy) in err and "read-only" in err and "--output DIR" in err
    elsewhere = tmp_path / "elsewhere"
    assert main(["eval", str(run_copy), "--output", str(elsewhere)]) == 0
    assert (elsewhere / "eval_test.json").is_file()
    assert list((elsewhere / "renders" / "test").glob("*.png"))
    assert _listing(run_copy) == before


def test_eval_refuses_an_unwritable_run_folder_before_evaluating(run_copy, tmp_path, capsys,
                                                                  monkeypatch):
    """Also as root: the folder's writes fail the way a read-only disk's do."""
    before = _listing(run_copy)
    _refuse_temporaries_in(monkeypatch, run_copy)
    calls = _spy_on_evaluations(monkeypatch)
    assert main(["eval", str(run_copy), "--no-renders"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nerfmine: ") and "Traceback" not in err
    assert str(run_copy) in err and "--output DIR" in err and "Nothing was evaluated" in err
    assert calls == []  # refused before the evaluation

    # --output writes the evaluation elsewhere, in the run folder's layout.
    elsewhere = tmp_path / "elsewhere"
    assert main(["eval", str(run_copy), "--output", str(elsewhere)]) == 0
    assert len(calls) == 1
    result = json.loads((elsewhere / "eval_test.json").read_text())
    assert result["split"] == "test" and math.isfinite(result["psnr"])
    assert len(list((elsewhere / "renders" / "test").glob("*.png"))) == 1
    assert str(elsewhere / "eval_test.json") in capsys.readouterr().out
    assert _listing(run_copy) == before


def test_eval_refuses_an_unwritable_output_or_renders_folder(run_copy, tmp_path, capsys,
                                                             monkeypatch):
    calls = _spy_on_evaluations(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    _refuse_temporaries_in(monkeypatch, locked)
    assert main(["eval", str(run_copy), "--output", str(locked)]) == 2
    err = capsys.readouterr().err
    assert str(locked) in err and "choose a writable folder with --output DIR" in err

    # The run folder writable, its renders folder not: refused before the evaluation too.
    monkeypatch.undo()
    calls = _spy_on_evaluations(monkeypatch)
    renders = run_copy / "renders" / "test"
    renders.mkdir(parents=True, exist_ok=True)
    _refuse_temporaries_in(monkeypatch, renders)
    assert main(["eval", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert str(renders) in err and "--output DIR" in err
    assert calls == []


def test_eval_write_failures_after_the_evaluation_are_output_errors(run_copy, capsys,
                                                                    monkeypatch):
    """A write that fails once the evaluation ran (the folder passed the check, then a full
    or read-only disk) is an OutputError naming the file, not a traceback."""
    from nerfmine.cli import build_parser
    from nerfmine.cli import eval as eval_cli
    from nerfmine.errors import OutputError

    real = os.replace
    refused = []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().is_relative_to(run_copy.resolve()):
            refused.append(Path(dst))
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    for extra in (["--no-renders"], []):
        assert main(["eval", str(run_copy), *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "could not write" in err
        assert str(refused[-1]) in err and "--output" in err
    assert refused[0].name == "eval_test.json" and refused[1].suffix == ".png"
    with pytest.raises(OutputError, match="eval_test.json"):
        eval_cli.run(build_parser().parse_args(["eval", str(run_copy), "--no-renders"]))
