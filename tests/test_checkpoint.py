import os

import pytest
import torch

from nerfmine.checkpoint import load_checkpoint, save_checkpoint
from nerfmine.errors import ConfigError


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 3, "weights": torch.arange(5.0)})
    state = load_checkpoint(path)
    assert state["step"] == 3
    assert torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_missing_and_corrupt_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable nerfmine checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
