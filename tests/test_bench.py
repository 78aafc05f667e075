"""nerfmine bench: both arms from one command, and the comparison figures."""

from __future__ import annotations

import json

import pytest

from nerfmine.bench import compare, merge
from nerfmine.cli import main
from nerfmine.errors import NerfmineError


def _arm(mining, curve, increment):
    return {"mining": mining, "steps": curve[-1]["step"], "curve": curve,
            "mean_hard_fraction": 0.2 if mining == "hsm" else None,
            "peak_gpu_memory": {"training_increment_bytes": increment,
                                "total_peak_bytes": increment + 100}}


def test_compare_on_hand_built_curves(tmp_path):
    base = _arm("none", [{"clock": 60, "step": 10, "psnr": 30.0, "ssim": 0.9},
                         {"clock": 120, "step": 20, "psnr": 31.0, "ssim": 0.9},
                         {"clock": 240, "step": 40, "psnr": 32.0, "ssim": 0.9}], 1000)
    mine = _arm("hsm", [{"clock": 60, "step": 8, "psnr": 30.5, "ssim": 0.9},
                        {"clock": 120, "step": 16, "psnr": 32.1, "ssim": 0.9}], 500)
    result = compare({"none": base, "hsm": mine})
    assert result["mining_first_reaches_baseline_final_at"]["clock"] == 120
    assert result["psnr_gain_at"]["60"] == 0.5
    assert abs(result["psnr_gain_at"]["120"] - 1.1) < 1e-9
    assert result["training_increment_ratio"] == 0.5
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(mine))
    report = merge([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "out")
    assert report["comparison"] == result
    for name in ("bench.json", "bench_psnr_time.png", "bench_psnr_steps.png"):
        assert (tmp_path / "out" / name).is_file()


def test_bench_command_trains_both_arms(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "cpu", "--seconds", "4", "--eval-images", "1",
                 "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert set(report["arms"]) == {"none", "hsm"}
    assert report["arms"]["hsm"]["mining"] == "hsm" and report["arms"]["none"]["mining"] == "none"
    assert report["comparison"]["steps"]["hsm"] > 0


def test_warm_steps_train_a_throwaway_run_of_the_same_arm_first(tmp_path, monkeypatch):
    import nerfmine.trainer as trainer_module
    from nerfmine.bench import run_arm

    made = []

    class FakeTrainer:
        def __init__(self, config, run_dir):
            made.append((config, run_dir))

        def train(self, progress=None):  # noqa: ARG002
            return {"mining": made[-1][0].mining, "curve": []}

    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    metrics = run_arm("hsm", {"train": {"max_seconds": 7.0}}, "cpu", tmp_path, warm_steps=3)
    (warm, warm_dir), (real, real_dir) = made
    assert warm.mining == real.mining == "hsm"
    assert warm.train.max_steps == 3 and warm.train.max_seconds is None
    assert warm.train.eval_at == () and not warm.eval.save_renders
    assert real.train.max_seconds == 7.0 and real.train.max_steps is None
    assert real_dir == tmp_path / "hsm" and tmp_path not in warm_dir.parents
    assert metrics["kernel_cache"].startswith("warm")
    made.clear()
    assert run_arm("none", {"train": {"max_seconds": 7.0}}, "cpu", tmp_path / "c",
                   warm_steps=0)["kernel_cache"].startswith("cold")
    assert len(made) == 1


def test_bench_command_warm_steps(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "cpu", "--seconds", "2", "--eval-images", "1",
                 "--arms", "none", "--warm-steps", "2", "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["arms"]["none"]["kernel_cache"].startswith("warm (2 steps")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["none"]


def test_summary_over_seeds_pairs_each_seed_and_spreads_the_figures():
    from nerfmine.bench import summarise, table

    def arm(mining, psnrs, steps_per_s, increment):
        curve = [{"clock": c, "step": i, "psnr": p, "ssim": 0.9}
                 for i, (c, p) in enumerate(zip((60, 120), psnrs))]
        return {"mining": mining, "curve": curve, "psnr": psnrs[-1], "steps": 10,
                "steps_per_second": steps_per_s, "mean_hard_fraction": 0.2 if mining == "hsm"
                else None, "peak_gpu_memory": {"training_increment_bytes": increment,
                                               "total_peak_bytes": increment}}

    runs = {"fox": {"0": {"none": arm("none", [27.0, 28.0], 100, 10),
                          "hsm": arm("hsm", [28.5, 29.0], 90, 5)},
                    "1": {"none": arm("none", [27.5, 28.5], 110, 10),
                          "hsm": arm("hsm", [28.0, 28.6], 95, 5)}}}
    summary = summarise(runs)["fox"]
    final = summary["arms"]["hsm"]["final_psnr"]
    assert final["mean"] == 28.8 and final["min"] == 28.6 and final["max"] == 29.0
    gain = summary["mining_gain_at"]["60"]
    assert abs(gain["mean"] - 1.0) < 1e-9 and gain["min"] == 0.5 and gain["max"] == 1.5
    # Seed 0 reaches the baseline's 28.0 at 60 s (half the budget); seed 1 (28.5) does not.
    assert summary["mining_reaches_baseline_final_within_half_budget"] == [True, False]
    assert summary["arms"]["hsm"]["ssim_at"]["120"]["mean"] == 0.9
    assert summary["training_increment_ratio"]["mean"] == 0.5
    text = table(summarise(runs))
    assert "| fox | hsm |" in text and "28.80 (28.60 .. 29.00)" in text
    assert "0.50 (0.50 .. 0.50)" in text  # the increment ratio in the hsm - none row


def _suite_run(mining, psnr):
    return {"mining": mining, "psnr": psnr, "steps": 500, "steps_per_second": 10.0,
            "curve": [{"clock": 60.0, "step": 500, "psnr": psnr, "ssim": 0.9}]}


def test_merge_combines_benches_of_separate_seeds(tmp_path):
    """Seeds run in separate commands (each its own bench.json) merge into one report."""
    from nerfmine.bench import write_suite_report

    write_suite_report({"fox": {"0": {"none": _suite_run("none", 28.0),
                                      "hsm": _suite_run("hsm", 29.0)}}}, tmp_path / "a")
    write_suite_report({"fox": {"1": {"none": _suite_run("none", 30.0),
                                      "hsm": _suite_run("hsm", 30.5)}},
                        "bird": {"1": {"none": _suite_run("none", 25.0)}}}, tmp_path / "b")
    out = tmp_path / "merged"
    assert main(["bench", "--merge", str(tmp_path / "a" / "bench.json"),
                 str(tmp_path / "b" / "bench.json"), "--output", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["seeds"] == [0, 1] and report["scenes"] == ["fox", "bird"]
    gain = report["summary"]["fox"]["mining_gain_at"]["60"]
    assert gain["n"] == 2 and gain["min"] == 0.5 and gain["max"] == 1.0
    assert "| bird | none |" in (out / "bench_table.md").read_text()
    # A suite's bench.json and a single comparison's files do not mix.
    (tmp_path / "one.json").write_text(json.dumps(_suite_run("none", 1.0)))
    with pytest.raises(NerfmineError, match="not both"):
        merge([tmp_path / "a" / "bench.json", tmp_path / "one.json"], tmp_path / "x")
    # A seed's arms are a pair: one arm of a scene and seed in two files is refused, naming both.
    write_suite_report({"fox": {"0": {"hsm": _suite_run("hsm", 35.0)}}}, tmp_path / "c")
    with pytest.raises(NerfmineError, match=r"a.bench.json and .*c.bench.json both hold scene "
                                            r"'fox', seed 0, arm mining=hsm"):
        merge([tmp_path / "a" / "bench.json", tmp_path / "c" / "bench.json"], tmp_path / "y")
    # A malformed entry is named, not a traceback.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": {"fox": {"s0": {"hsm": _suite_run("hsm", 1.0)}}}}))
    with pytest.raises(NerfmineError, match=r"runs.fox.s0: a seed must be a whole number"):
        merge([bad], tmp_path / "z")
    bad.write_text(json.dumps({"runs": {"fox": {"0": {"hsm": {"psnr": 1.0}}}}}))
    with pytest.raises(NerfmineError, match=r"runs.fox.0.hsm: expected an arm"):
        merge([bad], tmp_path / "z")


def test_suite_writes_its_report_after_every_run(tmp_path, monkeypatch):
    """A suite stopped in its third run (a time limit, a kill) keeps the two finished runs in
    bench.json and bench_table.md."""
    import nerfmine.bench as bench

    calls = []

    def fake_run_arm(arm, values, preset, folder, progress, warm_steps):
        calls.append(arm)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _suite_run(arm, 28.0 + len(calls))

    monkeypatch.setattr(bench, "run_arm", fake_run_arm)
    with pytest.raises(KeyboardInterrupt):
        bench.run_suite([None], [0, 1], ["none", "hsm"], {}, "cpu", tmp_path, log=lambda _: None)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["runs"]["demo"]) == {"0"}
    assert set(report["runs"]["demo"]["0"]) == {"none", "hsm"}
    assert "| demo | hsm - none |" in (tmp_path / "bench_table.md").read_text()


def test_bench_over_seeds_writes_one_report(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": {"log2_table_size": 10, "n_levels": 4,
                                         "max_resolution": 64},
                               "occupancy": {"resolution": 16},
                               "train": {"target_samples": 1024, "initial_rays": 64},
                               "march": {"step_size": 3**0.5 / 128, "max_steps_per_ray": 128},
                               "eval": {"max_images": 1}}))
    out = tmp_path / "suite"
    assert main(["bench", "--preset", "cpu", "--seconds", "1", "--arms", "none",
                 "--seeds", "3,4", "--config", str(cfg), "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["seeds"] == [3, 4] and set(report["runs"]["demo"]) == {"3", "4"}
    seeds = [json.loads((out / "demo" / f"seed{s}" / "none" / "config.json").read_text())
             ["train"]["seed"] for s in (3, 4)]
    assert seeds == [3, 4]
    assert report["summary"]["demo"]["arms"]["none"]["final_psnr"]["n"] == 2
    assert "| demo | none |" in (out / "bench_table.md").read_text()
