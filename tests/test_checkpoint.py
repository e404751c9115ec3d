"""anygen.training.checkpoint: atomic commits, pruning after commit, crash safety, refusal of non-finite weights."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from anygen.errors import CheckpointError
from anygen.training import checkpoint as ckpt
from anygen.training.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    committed_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def make_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": capture_rng_state(),
            "extra": {"array": np.arange(5), "pair": (1, "a"), "none": None}}


def test_round_trip_restores_every_value(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path, 7, state)
    assert path.name == "step-00000007" and checkpoint_step(path) == 7
    loaded = load_checkpoint(path)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert set(loaded["optimizer"]["state"]) == {0, 1}  # int keys survive
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert np.array_equal(loaded["extra"]["array"], np.arange(5)) and loaded["extra"]["pair"] == (1, "a")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])


def test_rng_state_round_trip(tmp_path):
    save_checkpoint(tmp_path, 1, {"rng": capture_rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_prunes_only_after_commit_and_keeps_last(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, keep_last=2)
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_crash_mid_save_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(2)}, keep_last=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"x": torch.zeros(2)}, keep_last=1)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_directories_without_manifest_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(1)})
    (tmp_path / "step-00000009").mkdir()  # what a SIGKILL before the commit could leave behind
    (tmp_path / ".tmp-step-abc").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_non_finite_weights_are_never_committed(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="'w'.*NaN"):
        save_checkpoint(tmp_path, 2, {"w": torch.tensor([1.0, float("nan")])})
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-00000001"]


def test_refuses_values_that_would_need_pickle(tmp_path):
    with pytest.raises(CheckpointError, match="object"):
        save_checkpoint(tmp_path, 1, {"thing": object()})
    assert latest_checkpoint(tmp_path) is None


def test_truncated_files_are_reported(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"x": torch.ones(100)})
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        load_checkpoint(path)


# ---- a corrupt newest checkpoint, killed saves and prunes ---------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated_json", "no_step", "wrong_size"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})
    newest = save_checkpoint(tmp_path, 2, {"x": torch.zeros(2)})
    manifest = newest / "manifest.json"
    if damage == "garbage":
        manifest.write_bytes(b"\x00\xff not json")
    elif damage == "truncated_json":
        manifest.write_text(manifest.read_text()[:-5])
    elif damage == "no_step":
        manifest.write_text(json.dumps({"format": 1, "files": {}}))
    else:
        (newest / "tensors.safetensors").write_bytes((newest / "tensors.safetensors").read_bytes()[:-3])
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["x"], torch.ones(2))
    with pytest.raises(CheckpointError, match="step-00000002"):
        load_checkpoint(newest)


def test_a_corrupt_checkpoint_never_pushes_a_good_one_out(tmp_path):
    save_checkpoint(tmp_path, 4, {"x": torch.ones(1)}, keep_last=1)
    broken = save_checkpoint(tmp_path, 9, {"x": torch.ones(1)}, keep_last=2)
    (broken / "manifest.json").write_text("{")
    save_checkpoint(tmp_path, 5, {"x": torch.full((1,), 5.0)}, keep_last=1)  # resumed from step 4
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-00000005", "step-00000009"]
    save_checkpoint(tmp_path, 9, {"x": torch.full((1,), 9.0)}, keep_last=1)  # re-saving step 9 replaces it
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-00000009"]
    assert float(load_checkpoint(latest_checkpoint(tmp_path))["x"]) == 9.0


def test_leftovers_of_killed_training_are_removed_and_nothing_else(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.ones(1)})
    tmp = tmp_path / ".tmp-step-k2j4x9_a"  # a save killed mid-write by an earlier version
    tmp.mkdir()
    (tmp / "tensors.safetensors").write_bytes(b"half")
    half_pruned = tmp_path / "step-00000000"  # a prune killed after the manifest went
    half_pruned.mkdir()
    (half_pruned / "state.json").write_text("{}")
    empty = tmp_path / "step-00000003"
    empty.mkdir()
    mine = tmp_path / ".tmp-step-notes"  # named like ours, but holding a file we never write
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    user_step = tmp_path / "step-00000007"
    user_step.mkdir()
    (user_step / "README").write_text("keep")
    save_checkpoint(tmp_path, 2, {"x": torch.ones(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-step-notes", "step-00000001", "step-00000002",
                                                           "step-00000007"]
    assert (mine / "notes.txt").read_text() == "keep" and (user_step / "README").read_text() == "keep"


def test_a_step_set_aside_by_an_earlier_version_is_moved_back(tmp_path):
    path = save_checkpoint(tmp_path, 3, {"x": torch.ones(1)})
    path.rename(tmp_path / ".old-step-00000003-4242")  # killed between its two renames
    save_checkpoint(tmp_path, 4, {"x": torch.zeros(1)})
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("step-")] == []
    assert [p.name for p in committed_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]


class Killed(BaseException):
    """The process died here: nothing after it may touch the disk."""


def _kill_at(monkeypatch, call):
    """Kill the process at the ``call``-th rename or delete; returns the running count of those calls."""
    counter = [0]
    names = ("replace", "rename", "remove", "unlink", "rmdir")
    real = {name: getattr(os, name) for name in names}

    def dead(*args, **kwargs):
        raise Killed("the process is gone")

    def counted(name):
        def operation(*args, **kwargs):
            counter[0] += 1
            if counter[0] == call:
                for other in names:
                    monkeypatch.setattr(os, other, dead)
                raise Killed(f"killed at {name} #{call}")
            return real[name](*args, **kwargs)
        return operation

    for name in names:
        monkeypatch.setattr(os, name, counted(name))
    return counter


@pytest.mark.parametrize("resave", [False, True])
def test_training_killed_at_any_rename_or_delete_resumes_from_a_whole_checkpoint(tmp_path, monkeypatch, resave):
    """Killed at each rename or delete of a save (of a new step, or a re-saved one) and of the prune after it."""
    save_checkpoint(tmp_path / "probe", 1, {"x": torch.ones(1)}, keep_last=1)
    with monkeypatch.context() as patch:
        counter = _kill_at(patch, -1)
        save_checkpoint(tmp_path / "probe", 2 - resave, {"x": torch.ones(1)}, keep_last=1)
    assert counter[0] >= 3
    for call in range(1, counter[0] + 1):
        root = tmp_path / f"crash-{call}"
        save_checkpoint(root, 1, {"x": torch.ones(1)}, keep_last=1)
        with monkeypatch.context() as patch:
            _kill_at(patch, call)
            with pytest.raises(Killed):
                save_checkpoint(root, 2 - resave, {"x": torch.full((1,), 2.0)}, keep_last=1)
        state = load_checkpoint(latest_checkpoint(root))
        assert float(state["x"]) in (1.0, 2.0), call
        save_checkpoint(root, 3, {"x": torch.full((1,), 3.0)}, keep_last=1)
        assert [p.name for p in root.iterdir()] == ["step-00000003"], call
