from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from anygen.assets import ASSETS, DEFAULT_MODEL, model_dir, resolve_model
from anygen.config import load_config, to_dict
from anygen.errors import InvalidArgumentError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Train:
    steps: int = 10
    name: str = "run"
    folder: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides_build_nested_dataclasses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.01\n")
    config = load_config(Train, path, ["optim.betas=[0.8, 0.9]", "name=x", "optim.lr=3e-4"])
    assert config == Train(steps=5, name="x", optim=Optim(lr=3e-4, betas=(0.8, 0.9)))
    assert load_config(Train, None, []) == Train()
    assert load_config(Train, None, ["steps=7"]).steps == 7


def test_round_trip_through_a_plain_dict() -> None:
    config = Train(steps=3, optim=Optim(lr=0.5))
    from anygen.config import from_dict

    assert from_dict(Train, to_dict(config)) == config


@pytest.mark.parametrize("overrides, match", [
    (["step=3"], "unknown config key.*step"),
    (["optim.beta=1"], "optim.beta"),
    (["steps=three"], "steps='three' must be of type int"),
    (["steps=true"], "steps"),
    (["optim=3"], "optim must be a mapping"),
    (["noequals"], "key.sub=value"),
])
def test_strict_errors_name_the_key(overrides: list[str], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        load_config(Train, None, overrides)


def test_yaml_is_data_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(InvalidArgumentError, match="not plain YAML data"):
        load_config(Train, path)


def test_unreadable_config_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="missing.yaml' does not exist"):
        load_config(Train, tmp_path / "missing.yaml")
    with pytest.raises(InvalidArgumentError, match="is a directory, not a YAML file"):
        load_config(Train, tmp_path)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00steps")
    with pytest.raises(InvalidArgumentError, match="binary.yaml' cannot be read as UTF-8"):
        load_config(Train, tmp_path / "binary.yaml")


# ---- pkg:// names files shipped inside the package -----------------------------------------------------------------


@dataclass
class Paths:
    tokenizer: str = ""
    init_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_pkg_paths_resolve_the_same_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tokenizer: pkg://anygen-tiny/tokenizers/image\ninit_from: pkg://anygen-tiny\n"
                    "extra: {audio: pkg://anygen-tiny/tokenizers/audio, name: runs/x}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(Paths, path)
    assert config.tokenizer == str(ASSETS / "anygen-tiny" / "tokenizers" / "image")
    assert Path(config.tokenizer).is_absolute() and (Path(config.tokenizer) / "config.json").is_file()
    assert config.init_from == str(DEFAULT_MODEL)
    assert config.extra == {"audio": str(ASSETS / "anygen-tiny" / "tokenizers" / "audio"), "name": "runs/x"}
    assert load_config(Paths, None, ["tokenizer=pkg://anygen-tiny/tokenizers/audio"]).tokenizer.startswith("/")


@pytest.mark.parametrize("value, match", [
    ("pkg://../../../etc", "inside the package's assets"),
    ("pkg://", "inside the package's assets"),
    ("pkg://anygen-huge/tokenizers/image", "not shipped"),
])
def test_pkg_paths_stay_inside_the_shipped_assets(value: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"init_from: .*{match}"):
        load_config(Paths, None, [f"init_from={value}"])


def test_model_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model(None) == resolve_model("default") == resolve_model("anygen-tiny") == DEFAULT_MODEL
    assert resolve_model("pkg://anygen-tiny") == DEFAULT_MODEL
    assert resolve_model("runs/model") == Path("runs/model")
    (tmp_path / "anygen-tiny").mkdir()  # a local folder of that name wins, as in from_pretrained ...
    assert resolve_model("anygen-tiny") == Path("anygen-tiny")
    assert resolve_model("pkg://anygen-tiny") == DEFAULT_MODEL  # ... and pkg:// always means the shipped one
    with pytest.raises(InvalidArgumentError, match="--model='nowhere'"):
        model_dir("nowhere")
