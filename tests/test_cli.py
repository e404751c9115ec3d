from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from anygen import cli
from anygen.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Every folder of configs/ and the dataclass its YAML files must load into.
SCHEMAS = {"tokenizer": "anygen.training.tokenizer:TokenizerTrainConfig", "data": "anygen.data.corpus:DataConfig",
           "train": "anygen.training.core_recipe:CoreTrainConfig",
           "decoder": "anygen.training.decoder_recipe:DecoderTrainConfig",
           "extend": "anygen.training.extend_recipe:ExtendConfig"}


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_a_working_parser(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"anygen {name}" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "anygen", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_config_loads_into_its_dataclass(path: Path) -> None:
    kind = path.relative_to(CONFIGS).parts[0]
    assert kind in SCHEMAS, f"configs/{kind}/ has no schema registered in this test"
    module, _, name = SCHEMAS[kind].partition(":")
    load_config(getattr(importlib.import_module(module), name), path)
