from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

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
