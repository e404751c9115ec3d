"""anygen.training.checkpoint: atomic commits, pruning after commit, crash safety, refusal of non-finite weights."""

from __future__ import annotations

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
    assert not list(tmp_path.glob(".tmp-*"))


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
