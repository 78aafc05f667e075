"""benchmarks/primitives.py on the CPU at tiny sizes: a checkerboard image and a sphere, both
arms, two evaluation times. It runs for real through the device tool; here it must at least
write what it says (a record per file x seed x arm with the metric at each time, at or past
that time, the step time, the table size, the figures of the run folders) and print its
table. Also FitLoop.warm_up, the hook it relies on: the fit after a warm-up trains exactly as
one that had none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_benchmark_scripts import _load

TINY_IMAGE = {"pixels_per_step": 64, "log2_table_size": 8, "n_levels": 4, "render_tile": 256}
TINY_SDF = {"n_levels": 4, "base_resolution": 8, "max_resolution": 32, "log2_table_size": 10,
            "samples_per_step": 256, "pool_size": 4096, "iou_points": 4096,
            "mesh_resolution": 16, "eval_chunk": 4096, "lr": 3e-3}


def _checkerboard(path: Path, size: int = 16) -> Path:
    yy, xx = np.mgrid[0:size, 0:size]
    board = ((yy // 4 + xx // 4) % 2).astype(np.uint8) * 200 + 20
    Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1)).save(path)
    return path


def test_warm_up_leaves_the_fit_as_it_was(tmp_path):
    from nerfmine.image.config import make_config
    from nerfmine.image.fit import ImageFit

    image = _checkerboard(tmp_path / "board.png")
    config = make_config("cpu", {"device": "cpu", "steps": 4, "eval_every": 2, **TINY_IMAGE})
    plain = ImageFit.create(config, image, tmp_path / "a")
    plain.train()
    warmed = ImageFit.create(config, image, tmp_path / "b")
    assert warmed.warm_up(3) >= 0 and warmed.step == 0 and warmed.clock == 0.0
    warmed.train()
    for name, value in plain.field.state_dict().items():
        assert torch.equal(value, warmed.field.state_dict()[name]), name
    assert plain.miner.steps.item() == warmed.miner.steps.item() == 4
    assert [p["psnr"] for p in plain.curve] == [p["psnr"] for p in warmed.curve]


def test_benchmark_writes_every_run_and_its_table(tmp_path, capsys):
    bench = _load("primitives")
    image = _checkerboard(tmp_path / "board.png")
    files = ["--images", str(image)]
    arms = {"image": ["none", "hsm"]}
    try:
        import igl  # noqa: F401
        import trimesh
    except ImportError:  # the image half still runs
        pass
    else:
        mesh = tmp_path / "sphere.obj"
        trimesh.creation.icosphere(subdivisions=2).export(mesh)
        files += ["--meshes", str(mesh)]
        arms["sdf"] = ["none", "hsm"]
    out = tmp_path / "results" / "prims.json"
    assert bench.main([*files, "--seconds", "0.3", "--eval-at", "0.3,0.1", "--seeds", "0",
                       "--preset", "cpu", "--device", "cpu", "--warmup-steps", "2",
                       "--timing-steps", "3", "--image-overrides", json.dumps(TINY_IMAGE),
                       "--sdf-overrides", json.dumps(TINY_SDF), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["gpu"] == "cpu" and results["commit"] and results["torch"]
    assert results["eval_at"] == [0.1, 0.3] and results["preset"] == "cpu"
    runs = results["runs"]
    assert [(r["primitive"], r["arm"]) for r in runs] == [
        (primitive, arm) for primitive, names in arms.items() for arm in names]
    for r in runs:
        assert r["training_seconds"] >= 0.3 and r["stopped_by"] == "seconds"
        assert [p["at"] for p in r["points"]] == [0.1, 0.3]
        for point in r["points"]:
            assert point["clock"] >= point["at"] and point[r["metric"]] is not None
        assert r["points"][0]["step"] <= r["points"][1]["step"] <= r["steps"]
        assert r["median_step_ms"] > 0 and r["timed_steps"] == 3
        assert r["log2_table_size"] == (8 if r["primitive"] == "image" else 10)
        assert r["samples_per_step"] == (64 if r["primitive"] == "image" else 256)
        assert r["config"]["mining"] == r["arm"] and r["seconds"]["total"] > 0
        for name in r["figures"].values():
            assert (out.parent / name).is_file()
    assert {"crops.png", "psnr_curve.png"} <= set(runs[0]["figures"])
    if "sdf" in arms:
        assert "mesh_vs_truth.png" in runs[-1]["figures"]
    printed = capsys.readouterr().out
    assert "| board.png | none | 0 |" in printed and "PSNR dB @0.1 s" in printed
    assert ("| sphere.obj | hsm | 0 |" in printed) == ("sdf" in arms)


def test_benchmark_refuses_bad_arguments_before_running(tmp_path, capsys):
    bench = _load("primitives")
    image = _checkerboard(tmp_path / "board.png")
    with pytest.raises(SystemExit):
        bench.main(["--seconds", "1", "--out", str(tmp_path / "x.json")])
    assert "at least one --images or --meshes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--images", str(tmp_path / "missing.png"), "--seconds", "1",
                    "--out", str(tmp_path / "x.json")])
    assert "no such file" in capsys.readouterr().err
    assert bench.main(["--images", str(image), "--seconds", "1", "--arms", "hsm-error",
                       "--device", "cpu", "--out", str(tmp_path / "x.json")]) == 2
    assert "mining must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
