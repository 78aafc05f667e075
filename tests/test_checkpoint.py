"""Checkpoint files: atomic writes, safe loading, format versions and content hashes."""

import errno
import os

import pytest
import torch

from nerfmine.checkpoint import FORMAT_VERSION, content_digest, load_checkpoint, save_checkpoint
from nerfmine.errors import ConfigError, OutputError

STATE = {"step": 3, "weights": torch.arange(5.0), "nested": {"b": [1, 2.5, None, "x"],
                                                             "a": torch.zeros(2, 3, 0)},
         "flag": torch.tensor(True), "half": torch.ones(4, dtype=torch.float16)}


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, STATE)
    state = load_checkpoint(path)
    assert state["step"] == 3 and state["nested"]["b"] == [1, 2.5, None, "x"]
    assert torch.equal(state["weights"], torch.arange(5.0))
    assert "format_version" not in state and "content_sha256" not in state
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert raw["content_sha256"] == content_digest(STATE)


def test_content_digest_sees_every_value():
    """Changing any tensor element, dtype, shape, key or plain value changes the digest;
    key order does not."""
    base = content_digest(STATE)
    assert content_digest(dict(reversed(list(STATE.items())))) == base
    changed = [
        {**STATE, "weights": torch.arange(5.0) + torch.tensor([0, 0, 0, 2.5e-7, 0])},
        {**STATE, "weights": torch.arange(5.0).double()},
        {**STATE, "weights": torch.arange(5.0).reshape(5, 1)},
        {**STATE, "step": 4},
        {**STATE, "step": 3.0},
        {**STATE, "nested": {"b": [1, 2.5, None, "y"], "a": STATE["nested"]["a"]}},
        {**{k: v for k, v in STATE.items() if k != "flag"}, "flags": STATE["flag"]},
    ]
    digests = {content_digest(s) for s in changed}
    assert base not in digests and len(digests) == len(changed)
    with pytest.raises(TypeError, match="set"):
        content_digest({"bad": {1, 2}})


def test_a_changed_byte_is_refused(tmp_path):
    """A checkpoint whose tensor bytes changed after the write is refused by its hash."""
    path = tmp_path / "checkpoint.pt"
    weights = torch.full((64,), 1.25)
    save_checkpoint(path, {"step": 1, "weights": weights})
    data = bytearray(path.read_bytes())
    pattern = weights.numpy().tobytes()
    at = bytes(data).find(pattern)
    assert at > 0  # the zip stores tensor data uncompressed
    data[at + 5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its hash"):
        load_checkpoint(path)


def test_loading_never_runs_code_from_the_file(tmp_path):
    """A pickle that would call a function on load is refused (weights_only loading)."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": FORMAT_VERSION, "step": Evil()}, path)
    with pytest.raises(ConfigError, match="never code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_and_older_formats(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 7, "step": 1}, path)
    with pytest.raises(ConfigError, match="newer nerfmine"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)
    with pytest.raises(ConfigError, match="no format_version"):
        load_checkpoint(path)
    torch.save({"format_version": 1, "step": 5}, path)  # before hashes: loads unchecked
    assert load_checkpoint(path)["step"] == 5


def test_killed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
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


@pytest.mark.parametrize("failure", ["enospc", "torch_writer"])
def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                         failure):
    """A full disk, as the OS reports it (ENOSPC) or as torch's zip writer does (a bare
    RuntimeError, with the free space then telling why): OutputError naming the file and the
    cause, the earlier checkpoint intact, no temporary file left."""
    import shutil

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def full(obj, handle):
        handle.write(b"x" * 1000)
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 4096))
    with pytest.raises(OutputError, match=r"checkpoint\.pt: the disk is full") as info:
        save_checkpoint(path, {"step": 2})
    assert "previous version" in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_missing_and_corrupt_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable nerfmine checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ConfigError, match="not a readable nerfmine checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
