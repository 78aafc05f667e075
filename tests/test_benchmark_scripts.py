"""The GPU benchmark scripts' code paths, run on the CPU at tiny sizes (demo scene, cpu preset).

They are run for real through the device tool; here they must at least do what they say: the
probe applies each setting (and the scene scale) and evaluates test and training views, the
profiler names every stage of a step, for both arms, attributes kernels by
the stage they ran in and leaves range annotations out.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Smaller than the cpu preset, so that each run takes seconds.
TINY = {"model": {"log2_table_size": 12, "max_resolution": 64},
        "occupancy": {"resolution": 16, "step_size": math.sqrt(3) / 64},
        "train": {"target_samples": 1 << 10, "initial_rays": 64, "ray_granularity": 16},
        "march": {"step_size": math.sqrt(3) / 64, "max_steps_per_ray": 64},
        "eval": {"rays_per_chunk": 1 << 12}}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quality_probe_applies_the_scene_scale_and_the_overrides(tmp_path, monkeypatch):
    probe = _load("quality_probe")
    from nerfmine.trainer import Trainer

    seen = {}
    original_init = Trainer.__init__

    def spy(self, config, run_dir, train_data=None):
        original_init(self, config, run_dir, train_data)
        seen.setdefault("scales", []).append(self.train_data.scale)
        seen.setdefault("configs", []).append(self.config)

    monkeypatch.setattr(Trainer, "__init__", spy)
    monkeypatch.setitem(probe.VARIANTS, "test_scaled",
                        {"scene_scale": 0.25, "model": TINY["model"],
                         "occupancy": TINY["occupancy"], "train": TINY["train"],
                         "march": TINY["march"], "eval": TINY["eval"],
                         "optim": {"lr": 3e-3}, "mining": "hsm"})
    monkeypatch.setitem(probe.VARIANTS, "test_tiny", TINY)
    r = probe.run_variant("test_scaled", None, 3, 1, 1, tmp_path / "a", graphs=False,
                          preset="cpu")
    assert seen["scales"] == [0.25]
    config = seen["configs"][0]
    assert config.optim.lr == 3e-3 and config.mining == "hsm" and config.data.scale == 0.25
    assert r["steps"] == 3 and math.isfinite(r["test_psnr"]) and math.isfinite(r["train_psnr"])
    assert r["mean_hard_fraction"] is not None
    # A plain run sees the scene's own scale.
    probe.run_variant("test_tiny", None, 1, 1, 1, tmp_path / "b", graphs=False, preset="cpu")
    assert seen["scales"][1] == pytest.approx(0.33)


def test_profile_step_names_every_stage_of_both_arms(tmp_path):
    prof = _load("profile_step")
    stages = {}
    for mining in ("none", "hsm"):
        r = prof.profile_arm(None, mining, "torch", warmup=1, steps=2, preset="cpu",
                             overrides=TINY)
        stages[mining] = set(r["stage_kernel_ms_per_step"])
        assert r["total_kernel_ms_per_step"] > 0
        assert r["top_kernels"] and all(k["ms_per_step"] >= 0 for k in r["top_kernels"])
        json.dumps(r)  # the report is plain JSON
    common = {"rays_march", "forward_backward", "optimizer", "ema_bookkeeping"}
    assert common <= stages["none"] and "first_forward" not in stages["none"]
    assert common | {"first_forward", "mining"} <= stages["hsm"]


def test_profile_step_attributes_kernels_by_the_stage_they_ran_in():
    prof = _load("profile_step")
    ranges = [(0.0, 10.0, "rays_march"), (10.0, 25.0, "forward_backward"),
              (30.0, 31.0, "optimizer")]
    assert prof.attribute_by_time(ranges, 0.0) == "rays_march"
    assert prof.attribute_by_time(ranges, 9.5) == "rays_march"
    assert prof.attribute_by_time(ranges, 24.0) == "forward_backward"
    assert prof.attribute_by_time(ranges, 30.5) == "optimizer"
    assert prof.attribute_by_time(ranges, 27.0) is None  # between ranges
    assert prof.attribute_by_time(ranges, 40.0) is None
    assert prof.attribute_by_time([], 1.0) is None


def test_profile_step_leaves_range_annotations_out_of_the_kernels():
    prof = _load("profile_step")

    class Event:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert prof._is_annotation(Event(is_user_annotation=True))
    assert prof._is_annotation(Event(activity_type="gpu_user_annotation"))
    assert not prof._is_annotation(Event(is_user_annotation=False, activity_type="kernel"))


def test_graph_memory_names_what_is_alive_at_the_peak():
    memory = _load("graph_memory")
    ours = [{"filename": "/x/src/nerfmine/field.py", "line": 10, "name": "forward"}]
    torch_only = [{"filename": "/t/torch/nn/functional.py", "line": 3, "name": "linear"}]
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": ours},
        {"action": "alloc", "addr": 2, "size": 50, "frames": torch_only},
        {"action": "free_requested", "addr": 2, "size": 50, "frames": []},
        {"action": "free_completed", "addr": 2, "size": 50, "frames": []},
        {"action": "alloc", "addr": 3, "size": 70, "frames": []},
        {"action": "alloc", "addr": 4, "size": 30, "frames": ours},  # peak: 100 + 70 + 30
        {"action": "free_requested", "addr": 1, "size": 100, "frames": []},
        {"action": "free_requested", "addr": 99, "size": 1000, "frames": []},  # from setup
        {"action": "alloc", "addr": 5, "size": 90, "frames": torch_only},  # 190, below
    ]
    report = memory.peak_breakdown(trace)
    assert report["peak_bytes"] == 200 and report["peak_event"] == 5
    sites = {s["site"]: (s["bytes"], s["blocks"]) for s in report["sites"]}
    assert sites == {"nerfmine/field.py:10 forward": (130, 2),
                     "(no Python frame: library workspace or allocator)": (70, 1)}


def test_quality_probe_validation_holds_out_training_views(tmp_path, monkeypatch):
    probe = _load("quality_probe")
    from nerfmine.evaluator import Evaluator
    from nerfmine.trainer import Trainer

    seen = {}
    original_init, original_evaluate = Trainer.__init__, Evaluator.evaluate

    def spy_init(self, config, run_dir, train_data=None):
        original_init(self, config, run_dir, train_data)
        seen.setdefault("train", []).append([str(p) for p in self.train_data.image_paths])

    def spy_evaluate(self, save_dir=None, mean_hard_fraction=None):
        seen.setdefault("eval", []).append([str(p) for p in self.data.image_paths])
        return original_evaluate(self, save_dir, mean_hard_fraction)

    monkeypatch.setattr(Trainer, "__init__", spy_init)
    monkeypatch.setattr(Evaluator, "evaluate", spy_evaluate)
    monkeypatch.setitem(probe.VARIANTS, "test_tiny", TINY)
    r = probe.run_variant("test_tiny", None, 2, 2, 2, tmp_path / "v", graphs=False,
                          preset="cpu", validation_every=3)
    trained, validation = seen["train"][0], seen["eval"][0]
    assert validation and trained and not set(validation) & set(trained)
    from nerfmine.data.blender import load_blender
    from nerfmine.data.demo import demo_scene_path

    every = [str(p) for p in load_blender(demo_scene_path(), "train", decode=False).image_paths]
    assert validation == every[::3]  # every 3rd training view, in the split's order
    assert sorted(trained + validation) == sorted(every)
    assert r["train_views"] == len(trained) and "validation" in r["evaluated_on"]
    assert math.isfinite(r["test_psnr"])
    # A plain run evaluates on the scene's own evaluation split.
    probe.run_variant("test_tiny", None, 1, 1, 1, tmp_path / "w", graphs=False, preset="cpu")
    assert not set(seen["eval"][2]) & set(every)  # [3]: its evaluation on training views


def test_ray_draw_times_both_ways_on_a_capture_with_a_lens(tmp_path):
    """ray_draw draws rays both ways on a capture with OpenCV distortion, and reports the
    centre table's one lens and the profiler's operator counts (the table's draw has fewer)."""
    from test_transforms import NGP, write_capture

    write_capture(tmp_path / "scene", NGP, 10)
    ray_draw = _load("ray_draw")
    r = ray_draw.measure(str(tmp_path / "scene"), "cpu", rays=256, repeats=3)
    assert r["camera_model"] == "opencv"
    newton, table = r["arms"]["newton_per_ray"], r["arms"]["centre_table"]
    assert table["table_lenses"] == 1 and newton["table_bytes"] is None
    assert table["table_bytes"] == r["image"][0] * r["image"][1] * 2 * 4
    assert table["profiled_ops_per_draw"] < newton["profiled_ops_per_draw"] / 4


@pytest.mark.parametrize("mining", ["none", "hsm"])
def test_touched_rows_counts_the_rows_a_step_writes(mining):
    """touched_rows counts the table rows with a gradient per level, and the bytes of a dense
    and a sparse exchange follow from the count."""
    touched_rows = _load("touched_rows")
    overrides = json.loads(json.dumps(TINY))
    overrides["device"] = "cpu"
    r = touched_rows.measure(None, "cpu", mining, warmup=2, steps=2, overrides=overrides)
    levels = r["per_level_touched_fraction"]
    assert len(levels) == 16 and all(0.0 <= f <= 1.0 for f in levels)
    assert 0.0 < r["touched_fraction"] < 1.0
    assert r["dense_bytes"] == r["rows"] * r["features"] * 4
    assert r["sparse_over_dense"] == pytest.approx(
        r["touched_fraction"] * (4 + 4 * r["features"]) / (4 * r["features"]))
