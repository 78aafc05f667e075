"""The memory estimate made before loading (nerfmine.memory): what it counts, the refusal with
its options, --auto-fit, and header-only scans that decode no pixels."""

from __future__ import annotations

import json

import pytest
import torch

from nerfmine import cli, memory
from nerfmine.config import make_config
from nerfmine.data import load_scene
from nerfmine.data.demo import demo_scene_path
from nerfmine.errors import ConfigError, DataError
from nerfmine.field import NGPField
from nerfmine.memory import HEADROOM, MemoryFitError, fit_memory, model_bytes

TINY = {"model": {"log2_table_size": 11, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16},
        "train": {"target_samples": 1024, "initial_rays": 64, "max_steps": 1},
        "march": {"max_steps_per_ray": 64, "step_size": 0.0271},
        "eval": {"max_images": 1, "save_renders": False}}
DEMO = demo_scene_path()
TRAIN_BYTES = 100 * 100 * 100 * 4  # the demo's 100 training images of 100x100 RGBA
BIG = 1 << 40


def _config(device="cuda", **data):
    overrides = json.loads(json.dumps(TINY))
    overrides["device"] = device
    overrides["backend"] = "torch"
    overrides["data"] = data
    return make_config("cpu", overrides)


def _model(config) -> int:
    return sum(model_bytes(config).values())


def test_estimate_counts_images_and_model():
    config = _config()
    notes: list[str] = []
    out = fit_memory(config, DEMO, notes, host_available=BIG, device_available=BIG)
    est = out.data.memory_estimate
    assert est["fits"] and est["action"] is None and est["device"] == "cuda"
    assert est["device_bytes"]["training images (100 x 100x100 RGBA)"] == TRAIN_BYTES
    assert est["host_bytes"]["training images (100 x 100x100 RGBA)"] == TRAIN_BYTES
    n_eval = len(load_scene(DEMO, "test", decode=False))
    assert est["host_bytes"][f"evaluation images ({n_eval} x 100x100 RGBA)"] == n_eval * 40000
    # the parameter count behind the model's bytes is the real model's
    params = sum(p.numel() for p in NGPField(config.model).parameters())
    table_key = next(k for k in est["device_bytes"] if k.startswith("hash table"))
    assert est["device_bytes"][table_key] == params * 20  # fp32 weights, grads, 2 moments, EMA
    assert any(n.startswith("memory estimate") and "cuda" in n for n in notes)


def test_refusal_gives_figures_and_options():
    config = _config()
    device = int((_model(config) + TRAIN_BYTES / 3) / HEADROOM)  # fits at downscale 2, not 1
    with pytest.raises(MemoryFitError) as err:
        fit_memory(config, DEMO, host_available=BIG, device_available=device)
    text = str(err.value)
    assert "does NOT fit" in text and "MiB" in text
    assert "--images-on-host" in text and "--downscale 2:" in text and "--auto-fit" in text
    assert "--no-memory-check" in text


def test_auto_fit_keeps_images_on_the_host_when_the_host_has_room():
    config = _config(memory_fit="auto")
    device = int((_model(config) + TRAIN_BYTES / 3) / HEADROOM)
    notes: list[str] = []
    out = fit_memory(config, DEMO, notes, host_available=BIG, device_available=device)
    assert out.data.images_on_host and out.data.downscale == 1
    assert out.data.memory_estimate["fits"]
    assert "before_auto_fit" in out.data.memory_estimate
    assert any("auto-fit applied images kept on the host" in n for n in notes)


def test_auto_fit_downscales_when_the_host_is_short_too():
    config = _config(memory_fit="auto")
    device = int((_model(config) + TRAIN_BYTES / 3) / HEADROOM)
    n_eval = len(load_scene(DEMO, "test", decode=False))
    # room for the images once, not for the extra copy made while pinning them
    host = int((TRAIN_BYTES * 1.5 + n_eval * 40000) / HEADROOM)
    out = fit_memory(config, DEMO, host_available=host, device_available=device)
    assert not out.data.images_on_host and out.data.downscale == 2
    assert "--downscale 2" in out.data.memory_estimate["action"]


def test_nothing_fits_names_the_model_settings():
    for mode in ("check", "auto"):
        with pytest.raises(MemoryFitError, match="target_samples"):
            fit_memory(_config(memory_fit=mode), DEMO, host_available=BIG,
                       device_available=_model(_config()) // 2)


def test_cpu_run_counts_everything_on_the_host():
    config = _config(device="cpu")
    with pytest.raises(MemoryFitError) as err:
        fit_memory(config, DEMO, host_available=int((_model(config) + TRAIN_BYTES / 2) / HEADROOM))
    assert "--downscale 2:" in str(err.value) and "--images-on-host" not in str(err.value)
    with pytest.raises(MemoryFitError, match="no --downscale that makes it fit"):
        fit_memory(config, DEMO, host_available=_model(config) // 2)


def test_check_off_records_and_runs_on():
    notes: list[str] = []
    out = fit_memory(_config(memory_fit="off"), DEMO, notes, host_available=BIG,
                     device_available=1)
    assert not out.data.memory_estimate["fits"]
    assert any("--no-memory-check" in n for n in notes)


def test_bad_memory_fit_value():
    with pytest.raises(ConfigError, match="data.memory_fit"):
        _config(memory_fit="sometimes")
    with pytest.raises(ConfigError, match="data.images_on_host"):
        _config(images_on_host="yes")


def test_header_scan_decodes_no_pixels(tmp_path):
    scene = tmp_path / "scene"
    scene.mkdir()
    meta = json.loads((DEMO / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:2]
    for frame in meta["frames"]:
        name = frame["file_path"].split("/")[-1] + ".png"
        data = (DEMO / (frame["file_path"] + ".png")).read_bytes()
        (scene / name).write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
        frame["file_path"] = name
    (scene / "transforms_train.json").write_text(json.dumps(meta))
    scan = load_scene(scene, "train", 2, decode=False)
    assert scan.images.device.type == "meta" and tuple(scan.images.shape) == (2, 50, 50, 4)
    with pytest.raises(DataError, match="corrupt or unreadable"):
        load_scene(scene, "train", 2)


def test_cli_refuses_then_auto_fits(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(2)
    monkeypatch.setattr(memory, "available_host_bytes", lambda: int(
        (_model(_config(device="cpu")) + TRAIN_BYTES / 3) / HEADROOM))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = ["train", "--config", str(config), "--output", str(tmp_path / "run"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--downscale 2" in err and "--auto-fit" in err and "Traceback" not in err
    assert cli.main(argv + ["--auto-fit"]) == 0
    assert "auto-fit applied --downscale 2" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["downscale"] == 2 and saved["data"]["memory_fit"] == "auto"
    assert saved["data"]["memory_estimate"]["fits"]


@pytest.mark.parametrize("kind", ["blender", "transforms", "colmap"])
def test_header_scan_matches_the_full_load(tmp_path, kind):
    """decode=False gives the same cameras and shapes as loading, for every scene format."""
    if kind == "blender":
        root, split = DEMO, "test"
    elif kind == "transforms":
        from test_capture_render import write_capture

        root, split = tmp_path, "train"
        write_capture(root)
    else:
        pytest.importorskip("pycolmap", reason="pycolmap is optional")
        from test_colmap import _write_project

        root, split = tmp_path, "all"
        _write_project(root)
    full = load_scene(root, split, 2)
    scan = load_scene(root, split, 2, decode=False)
    assert scan.images.device.type == "meta" and scan.images.shape == full.images.shape
    assert torch.equal(scan.c2w, full.c2w) and scan.image_paths == full.image_paths
    assert (scan.fx, scan.fy, scan.cx, scan.cy) == (full.fx, full.fy, full.cx, full.cy)
    for a, b in ((scan.intrinsics, full.intrinsics), (scan.distortion, full.distortion)):
        assert (a is None and b is None) or torch.equal(a, b)
