"""nerfmine sweep: the sweep file's checks, the cross product, and a sweep of tiny runs on two
CPU processes started through torchrun (gloo), with a failing run, a rerun that skips and
resumes, and the table rebuilt from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nerfmine.errors import ConfigError
from nerfmine.sweep import load_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           OMP_NUM_THREADS="1")

# Tiny runs of the bundled demo scene: a few seconds each on a CPU.
TINY = {"model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16},
        "train": {"target_samples": 1024, "initial_rays": 64, "max_steps": 4,
                  "eval_at": [4]},
        "march": {"step_size": 3**0.5 / 128, "max_steps_per_ray": 128},
        "eval": {"max_images": 1}}


def _write(path: Path, spec) -> Path:
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("spec, match", [
    ("not json", "not valid JSON"),
    ([], "expected an object"),
    ({"runs": [], "scenes": ["a"]}, "exactly one of 'runs'"),
    ({"runs": [{"name": "a"}], "extra": 1}, r"unknown field\(s\) extra"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "a appear more than once"),
    ({"runs": [{"name": "../up"}]}, r"runs\[0\].name '../up' is not a folder name"),
    ({"runs": [{"name": "a", "config": 3}]}, r"'runs\[0\].config' must be an object"),
    ({"runs": [{"name": "a", "gpu": 1}]}, r"runs\[0\] has unknown field\(s\) gpu"),
    ({"scenes": ["x"], "arms": ["mine"]}, "'arms' must be a list of none and hsm"),
    ({"scenes": ["x"], "seeds": [0.5]}, "'seeds' must be a list of whole numbers"),
    ({"runs": []}, "the sweep has no runs"),
])
def test_bad_sweep_files_name_the_file_and_field(tmp_path, spec, match):
    path = tmp_path / "sweep.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep(path)
    assert str(path) in str(info.value)


def test_cross_product_expands_scenes_arms_and_seeds(tmp_path):
    sweep = load_sweep(_write(tmp_path / "s.json", {
        "scenes": ["data/fox", "bird 360"], "arms": ["none", "hsm"], "seeds": [0, 1],
        "config": {"train": {"max_seconds": 60}}}))
    names = [r.name for r in sweep.runs]
    assert names[:4] == ["fox-none-seed0", "fox-none-seed1", "fox-hsm-seed0", "fox-hsm-seed1"]
    assert len(names) == 8 and "bird_360-hsm-seed1" in names
    run = sweep.runs[3]
    assert run.data == str((tmp_path / "data" / "fox").resolve())  # relative to the file
    assert run.config == {"train": {"max_seconds": 60, "seed": 1}, "mining": "hsm"}


def _sweep(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nerfmine", "sweep", *args], env=ENV,
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_two_processes_share_the_runs_and_one_table(tmp_path):
    """Four runs on two CPU processes through torchrun: each rank trains two, a run with a
    missing scene is recorded as failed without stopping its rank, rank 0 writes the table.
    Started again, the finished runs are skipped and a stopped one (metrics removed, its
    checkpoint kept) is resumed; --table-only rebuilds the table."""
    spec = {"preset": "cpu", "config": TINY, "runs": [
        {"name": "hsm0", "config": {"mining": "hsm", "train": {"seed": 0}}},
        {"name": "none0", "config": {"mining": "none", "train": {"seed": 0}}},
        {"name": "missing", "data": "no/such/scene"},
        {"name": "hsm1", "config": {"mining": "hsm", "train": {"seed": 1}}}]}
    path = _write(tmp_path / "sweep.json", spec)
    out = tmp_path / "out"
    done = _sweep(str(path), "-o", str(out), "--processes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stdout + done.stderr
    assert "rank 0: training hsm0" in log and "rank 1: training none0" in log
    assert "rank 0: training hsm1" not in log and "rank 1: training hsm1" in log
    report = json.loads((out / "sweep.json").read_text())
    status = {row["name"]: row["status"] for row in report["runs"]}
    assert status == {"hsm0": "done", "none0": "done", "missing": "failed", "hsm1": "done"}
    failed = next(row for row in report["runs"] if row["name"] == "missing")
    assert "no/such/scene" in failed["error"]
    metrics = {row["name"]: row["metrics"] for row in report["runs"] if "metrics" in row}
    assert metrics["none0"]["mining"] == "none" and metrics["hsm1"]["steps"] == 4
    table = (out / "sweep_table.md").read_text()
    assert "| hsm0 | done | lego_100 | hsm | 0 |" in table and "| missing | failed:" in table

    (out / "hsm1" / "metrics.json").unlink()  # as if its rank had been killed at the end
    again = _sweep(str(path), "-o", str(out), "--processes", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "hsm0 finished before; skipped" in again.stdout
    assert "resuming hsm1" in again.stdout and (out / "hsm1" / "metrics.json").is_file()
    rebuilt = _sweep(str(path), "-o", str(out), "--table-only", cwd=tmp_path)
    assert rebuilt.returncode == 0 and (out / "sweep_table.md").read_text().count("| done |") == 3
