"""Checkpoints: weights_only loading, the SHA-256 content digest, atomic and durable saves, and a
one-line CheckpointError naming the file for every way a file can be bad."""

import os
import pathlib

import pytest
import torch

from focalops.engine import content_digest, load_checkpoint, load_model, save_checkpoint
from focalops.errors import CheckpointError
from focalops.models import RetinaNet


def _state(**extra):
    return {
        "model": {"w": torch.arange(4096, dtype=torch.float32), "b": torch.zeros(3, dtype=torch.bfloat16)},
        "config": {"num_classes": 2, "anchor_sizes": (8, 16, 32, 64, 128)},
        "iteration": 7,
        "nested": [1, 2.5, "x", None, True, (torch.tensor(3), torch.zeros(0, 4))],
        **extra,
    }


def _refused(path, match):
    with pytest.raises(CheckpointError, match=match) as exc:
        load_checkpoint(str(path))
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def test_round_trip_and_digest(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(str(path), _state())
    loaded = load_checkpoint(str(path))
    assert loaded["format"] == "focalops-checkpoint" and loaded["version"] == 1 and loaded["iteration"] == 7
    assert torch.equal(loaded["model"]["w"], torch.arange(4096, dtype=torch.float32))
    assert loaded["model"]["b"].dtype == torch.bfloat16 and loaded["config"]["anchor_sizes"] == (8, 16, 32, 64, 128)
    assert loaded["sha256"] == content_digest(loaded)
    # The file itself opens with plain torch.load(weights_only=True): nothing but tensors and plain values.
    assert torch.load(path, weights_only=True)["iteration"] == 7
    # The digest covers types and structure, not only bytes.
    base = content_digest(_state())
    for change in ({"iteration": 7.0}, {"iteration": True}, {"iteration": "7"}, {"nested": [1, 2.5, "x", None]}):
        assert content_digest(_state(**change)) != base, change
    other = _state()
    other["model"]["w"] = other["model"]["w"].reshape(64, 64)
    assert content_digest(other) != base
    other["model"]["w"] = torch.arange(4096, dtype=torch.int32)
    assert content_digest(other) != base


def test_only_plain_values_are_saved(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]: a checkpoint holds only tensors and plain values"):
        save_checkpoint(str(tmp_path / "a.pth"), _state(extra=object()))
    with pytest.raises(ValueError, match="state lacks"):
        save_checkpoint(str(tmp_path / "a.pth"), {"model": {}})
    assert not os.listdir(tmp_path)


def test_save_is_atomic_durable_and_clears_stale_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    (tmp_path / "last.pth.tmp").write_bytes(b"left by a killed save")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(str(path), _state())
    # The file is synced before the rename, the folder after it.
    assert events == [("fsync", "file"), ("replace", "last.pth.tmp", "last.pth"), ("fsync", "folder")]
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]
    # A save that fails half-way leaves the previous checkpoint intact and no temporary.
    monkeypatch.undo()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(path), _state(iteration=8))
    assert sorted(os.listdir(tmp_path)) == ["last.pth"] and load_checkpoint(str(path))["iteration"] == 7


def _flip(data: bytes, start: int, count: int) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + count]) + data[start + count :]


@pytest.mark.parametrize("where", ["middle", "start", "pickle", "end"])
def test_flipped_bytes_are_refused(tmp_path, where):
    path = tmp_path / "last.pth"
    save_checkpoint(str(path), _state())
    data = path.read_bytes()
    start = {
        "middle": len(data) // 2 - 2048,  # 4 KB inside the tensor data
        "start": 0,  # the first zip header
        "pickle": data.index(b"data.pkl") + 40,  # the pickled structure
        "end": len(data) - 60,  # the central directory
    }[where]
    path.write_bytes(_flip(data, start, 4096 if where == "middle" else 16))
    _refused(path, "corrupted|not a readable checkpoint|not a focalops checkpoint|not a complete")


def test_a_changed_value_with_the_old_digest_is_refused(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(str(path), _state())
    state = torch.load(path, weights_only=True)
    state["model"]["w"][100] = 1e6  # a bit flip that kept the file readable
    torch.save(state, path)
    _refused(path, r"corrupted: content digest mismatch \(stored sha256 [0-9a-f]{16}\.\.\., content [0-9a-f]{16}")


class _Plant:
    """Pickles as a call that creates a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_unsafe_and_foreign_files_are_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"format": "focalops-checkpoint", "model": _Plant(marker)}, path)
    _refused(path, "refused: it holds Python objects other than tensors and plain values")
    assert not marker.exists()
    _refused(tmp_path / "missing.pth", "checkpoint not found")
    _refused(tmp_path, "is a folder")
    (tmp_path / "empty.pth").write_bytes(b"")
    _refused(tmp_path / "empty.pth", r"empty file \(0 bytes\)")
    (tmp_path / "text.pth").write_text("not a checkpoint\n" * 10)
    _refused(tmp_path / "text.pth", "not a readable checkpoint")
    save_checkpoint(str(tmp_path / "good.pth"), _state())
    data = (tmp_path / "good.pth").read_bytes()
    for size in (len(data) // 2, 100, 1):
        (tmp_path / "cut.pth").write_bytes(data[:size])
        _refused(tmp_path / "cut.pth", "not a readable checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "keys.pth")
    _refused(tmp_path / "keys.pth", "not a focalops checkpoint")
    torch.save(RetinaNet(2, "resnet18", fpn_channels=16, head_convs=1).state_dict(), tmp_path / "bare.pth")
    _refused(tmp_path / "bare.pth", "not a focalops checkpoint")
    state = torch.load(tmp_path / "good.pth", weights_only=True)
    del state["model"]
    torch.save(state, tmp_path / "partial.pth")
    _refused(tmp_path / "partial.pth", r"not a complete focalops checkpoint \(no 'model'\)")
    state = torch.load(tmp_path / "good.pth", weights_only=True)
    state["version"] = 99
    torch.save(state, tmp_path / "newer.pth")
    _refused(tmp_path / "newer.pth", "format version 99 is newer")


def test_load_model_checks_config_and_weights(tmp_path):
    model = RetinaNet(2, "resnet18", fpn_channels=16, head_convs=1, anchor_sizes=(8, 16, 32, 64, 128))
    path = str(tmp_path / "m.pth")
    save_checkpoint(path, {"model": model.state_dict(), "config": model.config, "iteration": 0})
    loaded, state = load_model(path, score_thresh=0.5)
    assert loaded.config["score_thresh"] == 0.5 and loaded.config["anchor_sizes"] == (8, 16, 32, 64, 128)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    save_checkpoint(path, {"model": model.state_dict(), "config": {**model.config, "backbone": "vgg"}, "iteration": 0})
    with pytest.raises(CheckpointError, match="its model config does not build a RetinaNet"):
        load_model(path)
    save_checkpoint(path, {"model": model.state_dict(), "config": {**model.config, "num_classes": 3}, "iteration": 0})
    with pytest.raises(CheckpointError, match="its weights do not fit the model of its config .*size mismatch"):
        load_model(path)
