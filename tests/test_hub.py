"""Hub-style loading and sharing, offline: a fake huggingface_hub cache on disk and a captured upload."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch

import anygen
from anygen.assets import DEFAULT_MODEL
from anygen.errors import CheckpointError
from anygen.hub import resolve_model
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline

REPO, COMMIT = "someone/tiny-anygen", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def hub_cache(tmp_path: Path, tiny_model: AnyGen, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub's cache layout holding one model: models--org--name/{refs/main, snapshots/<commit>/...}."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    tiny_model.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)  # no newline, as huggingface_hub writes it
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_a_hub_repo_loads_from_the_cache_offline(hub_cache: Path, tiny_model: AnyGen) -> None:
    pipe = anygen.load(REPO, image_size=(32, 32))
    local = AnyGenPipeline(tiny_model, image_size=(32, 32))
    a = pipe.text_to_image("a red circle", generator=seed(), output_type="pt").images
    assert torch.equal(a, local.text_to_image("a red circle", generator=seed(), output_type="pt").images)
    assert resolve_model(REPO, revision="main") == resolve_model(REPO, revision=COMMIT)
    assert resolve_model(REPO).parent.name == "snapshots"


def test_local_files_only_works_without_the_offline_variable(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert (resolve_model(REPO, local_files_only=True) / "config.json").is_file()


@pytest.mark.parametrize("name, kwargs, match", [
    ("someone/not-cached", {}, "not in the Hub cache .* Hub access is off"),
    (REPO, {"revision": "v2"}, "at 'v2' is not in the Hub cache"),
    ("not a repo id", {}, "neither a directory nor a Hub repository id"),
])
def test_what_cannot_be_found_is_named(hub_cache: Path, name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        anygen.load(name, **kwargs)


def test_shipped_names_and_local_directories_win(tmp_path: Path, tiny_model: AnyGen) -> None:
    assert resolve_model() == resolve_model("anygen-tiny") == DEFAULT_MODEL
    tiny_model.save_pretrained(tmp_path / "org" / "name")
    assert resolve_model(tmp_path / "org" / "name") == tmp_path / "org" / "name"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(tmp_path / "file")


def test_push_to_hub_uploads_a_saved_model(tiny_model: AnyGen, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi, constants

    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")  # the folder is a temporary one
        calls["upload"] = (repo_id, kwargs)
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pipe = AnyGenPipeline(tiny_model, image_size=(32, 32))
    url = pipe.push_to_hub("me/tiny", private=True, commit_message="first")
    assert url.endswith("me/tiny/commit/1")
    assert calls["repo"] == ("me/tiny", {"private": True, "exist_ok": True})
    assert calls["upload"][0] == "me/tiny" and calls["upload"][1]["commit_message"] == "first"
    uploaded = AnyGenPipeline(AnyGen.from_pretrained(tmp_path / "uploaded"), image_size=(32, 32))
    a = pipe.text_to_image("a", generator=seed(), output_type="pt").images
    assert torch.equal(a, uploaded.text_to_image("a", generator=seed(), output_type="pt").images)


def test_push_to_hub_is_refused_offline(tiny_model: AnyGen, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        AnyGenPipeline(tiny_model).push_to_hub("me/tiny")
    with pytest.raises(CheckpointError, match="org/name"):
        AnyGenPipeline(tiny_model).push_to_hub("not a repo")
