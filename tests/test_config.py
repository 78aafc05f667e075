import json

import pytest

from nerfmine.config import (
    check_resume_compatible,
    config_from_dict,
    load_config,
    make_config,
)
from nerfmine.errors import ConfigError


def test_cpu_preset_and_round_trip(tmp_path):
    config = make_config("cpu", {"train": {"max_steps": 10}})
    assert config.preset == "cpu" and config.backend == "torch"
    assert config.model.log2_table_size == 16 and config.train.target_samples == 1 << 13
    config.save(tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config


def test_gpu_preset_is_the_paper_setting():
    config = make_config("gpu", {"device": "cpu", "backend": "torch",
                                 "train": {"max_seconds": 60}})
    assert config.model.log2_table_size == 19 and config.model.n_levels == 16
    assert config.train.target_samples == 1 << 18 and config.optim.lr == 1e-2
    assert config.optim.eps == 1e-15 and config.optim.betas == (0.9, 0.99)
    assert config.occupancy.resolution == 128 and config.mining == "hsm"


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="train.learning_rate"):
        config_from_dict({"train": {"max_steps": 1, "learning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_dict({"trian": {}})


def test_budget_must_be_exactly_one():
    with pytest.raises(ConfigError, match="exactly one budget"):
        config_from_dict({})
    preset_default = make_config("cpu", {})
    assert preset_default.train.max_seconds == 300 and preset_default.train.eval_at == (60.0,)
    by_steps = make_config("cpu", {"train": {"max_steps": 7}})  # replaces the preset's budget
    assert by_steps.train.max_seconds is None and by_steps.train.eval_at == ()
    with pytest.raises(ConfigError, match="exactly one budget"):
        make_config("cpu", {"train": {"max_steps": 5, "max_seconds": 5}})


def test_triton_needs_cuda():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        make_config("cpu", {"backend": "triton", "train": {"max_steps": 1}})


def test_resume_compatibility():
    saved = make_config("cpu", {"train": {"max_steps": 10}})
    longer = make_config("cpu", {"train": {"max_steps": 50, "eval_at": [5, 20]}})
    check_resume_compatible(saved, longer)  # budget and eval points may change
    other = make_config("cpu", {"train": {"max_steps": 10}, "model": {"log2_table_size": 14}})
    with pytest.raises(ConfigError, match="model.log2_table_size"):
        check_resume_compatible(saved, other)


def test_malformed_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    path.write_text(json.dumps({"train": "fast"}))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_layout_1_is_upgraded_and_a_key_in_both_places_is_refused():
    from nerfmine.config import upgrade_layout

    old = {"train": {"max_steps": 5, "lr": 3e-3, "eval_max_images": 2, "step_size": 0.01,
                     "save_renders": False}, "model": {"n_levels": 8}}
    new, moved = upgrade_layout(old)
    assert new["optim"] == {"lr": 3e-3} and new["march"] == {"step_size": 0.01}
    assert new["eval"] == {"max_images": 2, "save_renders": False}
    assert new["train"] == {"max_steps": 5} and new["config_version"] == 2
    assert "train.lr -> optim.lr" in moved and old["train"]["lr"] == 3e-3  # input untouched
    config = config_from_dict(new)
    assert config.optim.lr == 3e-3 and config.eval.max_images == 2
    assert upgrade_layout(config.to_dict()) == (config.to_dict(), [])  # today's: unchanged
    with pytest.raises(ConfigError, match="optim.lr"):
        upgrade_layout({"train": {"lr": 1e-3}, "optim": {"lr": 1e-2}})
    with pytest.raises(ConfigError, match="newer nerfmine"):
        config_from_dict({"config_version": 3, "train": {"max_steps": 1}})


def test_resolving_against_the_scene_is_pure_and_records_what_it_chose():
    from types import SimpleNamespace

    from nerfmine.config import resolve_for_scene

    config = make_config("cpu", {"train": {"max_steps": 1}})
    fox = SimpleNamespace(aabb_scale=4.0, scale=0.2, offset=(0.4, 0.5, 0.6))
    resolved, notes = resolve_for_scene(config, fox)
    assert config.data.aabb_scale is None and config.march.cone_angle is None  # unchanged
    assert resolved.data.aabb_scale == 4.0 and resolved.occupancy.cascades == 3
    assert resolved.march.cone_angle == 1 / 256 and resolved.data.scale == 0.2
    assert resolved.data.offset == (0.4, 0.5, 0.6) and "3 occupancy cascades" in notes[0]
    again, _ = resolve_for_scene(resolved, fox)
    assert again == resolved  # resolving twice changes nothing
    unit, notes = resolve_for_scene(config, None)  # a run loaded without its data
    assert unit.data.aabb_scale == 1.0 and unit.march.cone_angle == 0.0 and notes == []


def test_an_old_key_in_python_overrides_is_named_with_its_new_place():
    with pytest.raises(ConfigError, match=r"train\.lr is now optim\.lr"):
        make_config("cpu", {"train": {"max_steps": 1, "lr": 1e-3}})
