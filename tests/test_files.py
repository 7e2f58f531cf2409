"""agents.files: atomic writes that leave the old file on any failure, torch files that
carry and check their own digest."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from agents import files
from agents.files import CorruptFileError, content_digest, load_torch, save_torch, write_atomic


def test_a_failed_rename_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    write_atomic(target, b"old")

    def fail(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match=r"cannot write .*last\.pt \(Input/output error\)"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_is_named_and_cleaned_up(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*metrics\.csv \(No space left on device\)"):
        write_atomic(tmp_path / "metrics.csv", "epoch\n1\n")
    assert list(tmp_path.iterdir()) == []


def test_stray_temporaries_are_removed_and_real_files_kept(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"whole")
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    removed = files.remove_stray_temporaries(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_torch_files_round_trip_with_their_digest(tmp_path):
    payload = {"w": torch.arange(6.0).view(2, 3), "step": 3, "history": [{"loss": 0.5}]}
    save_torch(tmp_path / "f.pt", payload)
    loaded = load_torch(tmp_path / "f.pt")
    assert loaded.keys() == payload.keys() and torch.equal(loaded["w"], payload["w"])
    assert torch.load(tmp_path / "f.pt", weights_only=True)["sha256"] == content_digest(payload)


def test_an_edited_value_breaks_the_digest(tmp_path):
    save_torch(tmp_path / "f.pt", {"w": torch.zeros(4), "step": 3})
    raw = torch.load(tmp_path / "f.pt", weights_only=True)
    raw["step"] = 4  # edited, saved again with the old digest
    torch.save(raw, tmp_path / "f.pt")
    with pytest.raises(CorruptFileError, match="altered or damaged"):
        load_torch(tmp_path / "f.pt")


def test_the_digest_sees_every_byte_type_and_order():
    base = {"a": torch.zeros(3), "b": 1}
    changed = [
        {"a": torch.tensor([0.0, 0.0, 1e-30]), "b": 1},  # one element
        {"a": torch.zeros(3, dtype=torch.float64), "b": 1},  # dtype
        {"a": torch.zeros(1, 3), "b": 1},  # shape
        {"b": 1, "a": torch.zeros(3)},  # order
        {"a": torch.zeros(3), "b": 1.0},  # type
        {"a": torch.zeros(3), "b": True},  # bool is not int
    ]
    assert len({content_digest(base), *map(content_digest, changed)}) == len(changed) + 1
    assert content_digest(base) == content_digest({"a": torch.zeros(3), "b": 1})


def test_the_shipped_weights_carry_their_digest():
    from agents.zoo import WEIGHTS_DIR, shipped

    for name in shipped():
        path = WEIGHTS_DIR / f"{name}.pt"
        assert "sha256" in torch.load(path, weights_only=True), name
        load_torch(path)  # and it matches


def test_a_checkpoint_whose_rename_fails_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    """save_checkpoint goes through the temporary file + rename: a failure at the rename
    (a full disk, a kill) leaves the previous ``last.pt`` whole, not half-overwritten."""
    from agents.checkpoint import read_checkpoint, save_checkpoint

    def payload(step: int) -> dict:
        parts = {k: {} for k in ("config", "game", "sender", "receiver")}
        return {**parts, "progress": {"step": step}}

    def fail(*args):
        raise OSError(errno.EIO, "Input/output error")

    save_checkpoint(tmp_path / "last.pt", payload(1))
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="cannot write"):
        save_checkpoint(tmp_path / "last.pt", payload(2))
    monkeypatch.undo()
    assert read_checkpoint(tmp_path, which="last")["progress"] == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
