"""Training the bundled demo scene on the CPU actually learns it (both mining modes)."""

from __future__ import annotations

import pytest

from nerfmine.config import make_config
from nerfmine.trainer import Trainer


@pytest.mark.slow
@pytest.mark.parametrize("mining", ["hsm", "none"])
def test_demo_scene_reaches_a_psnr_floor(mining, tmp_path):
    # 300 CPU-preset steps reach about 20 dB on the demo scene (an untrained field renders
    # about 10 dB over white); the floor leaves room for seeds and machines.
    config = make_config("cpu", {"mining": mining, "train": {"max_steps": 300},
                                 "eval": {"max_images": 5, "save_renders": False}})
    metrics = Trainer(config, tmp_path).train()
    assert metrics["steps"] == 300
    assert metrics["psnr"] > 18.0, metrics["psnr"]
    assert metrics["ssim"] > 0.6, metrics["ssim"]
