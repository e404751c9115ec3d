"""The ``anygen`` console script: every command parses, every user error is one line and exit status 2 before any
heavy work, and every command means the same thing from a folder outside the repository (RELIABILITY.md, CLI)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from anygen import __version__, cli
from anygen.assets import PACKAGE_PREFIX
from anygen.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Every folder of configs/ and the dataclass its YAML files must load into (None: another tool's own format).
SCHEMAS = {"tokenizer": "anygen.training.tokenizer:TokenizerTrainConfig", "data": "anygen.data.corpus:DataConfig",
           "train": "anygen.training.core_recipe:CoreTrainConfig",
           "decoder": "anygen.training.decoder_recipe:decoder_train_config",  # the class its `kind` names
           "extend": "anygen.training.extend_recipe:ExtendConfig",
           "accelerate": None}  # `accelerate launch --config_file` reads these
ANYGEN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if SCHEMAS.get(p.relative_to(CONFIGS).parts[0]))
# What each command does once its arguments are checked: none of it may run when an argument is wrong.
HEAVY_WORK = ["anygen.training.core_cli.train", "anygen.training.tokenizer_cli.train",
              "anygen.training.decoder_cli.train", "anygen.training.extend_cli.extend",
              "anygen.data.cli.write_corpus", "anygen.evaluation.cli.run_suite",
              "anygen.pipelines.AnyGenPipeline.from_pretrained"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_a_working_parser(name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside the repository
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"anygen {name}" in capsys.readouterr().out


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"anygen {__version__}" == f"anygen {pyproject}"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_console_script_runs_as_a_module_from_another_folder(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "anygen", "--help"], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert "COMMAND" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "anygen", "train", "--config", "missing.yaml"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert (bad.returncode == 2
            and bad.stderr.strip() == "anygen train: error: config file 'missing.yaml' does not exist")


# ---- user errors: one line, exit status 2, nothing heavy ran ------------------------------------------------------


@pytest.fixture()
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command's heavy step fails the test if it is reached."""
    for target in HEAVY_WORK:
        module, _, name = target.rpartition(".")
        try:
            owner: Any = importlib.import_module(module)
        except ModuleNotFoundError:  # a class attribute: module.Class.method
            module, _, cls = module.rpartition(".")
            owner = getattr(importlib.import_module(module), cls)
        monkeypatch.setattr(owner, name, _reached(target))


def _reached(target: str) -> Any:
    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError(f"{target} ran although an argument was wrong")

    return fail


SMOKE = str(CONFIGS / "train" / "smoke.yaml")
DECODER = str(CONFIGS / "decoder" / "image-tiny.yaml")
TOKENIZER = str(CONFIGS / "tokenizer" / "image-tiny-decoder.yaml")
SIGNAL = str(CONFIGS / "extend" / "signal.yaml")
EXTEND = ["extend", "--model", "anygen-tiny", "--modality", "signal", "--config", SIGNAL]


@pytest.mark.parametrize("argv, names", [
    (["train", "--config", "missing.yaml"], "missing.yaml"),
    (["train", "--config", "folder"], "'folder' is a directory"),
    (["train-tokenizer", "--config", "missing.yaml"], "missing.yaml"),
    (["train-decoder", "--config", "folder"], "'folder' is a directory"),
    (["extend", "--model", "anygen-tiny", "--modality", "signal", "--config", "folder"], "'folder'"),
    (["train", "--config", SMOKE, "--out", "afile"], "--out='afile' is a file"),
    (["train", "--config", SMOKE, "--set", "train.out_dir=afile/run"], "train.out_dir='afile/run'"),
    (["train-tokenizer", "--config", TOKENIZER, "--out", "afile"], "--out='afile'"),
    (["train-tokenizer", "--config", TOKENIZER, "--set", "output_dir=afile/run"], "output_dir='afile/run'"),
    (["train-decoder", "--config", DECODER, "--out", "afile/run"], "--out='afile/run'"),
    ([*EXTEND, "--out", "afile"], "--out='afile'"),
    (["extend", "--model", "nowhere", "--modality", "signal", "--config", SIGNAL], "--model='nowhere'"),
    (["data", "build", "--scale", "nan"], "--scale=nan"),
    (["data", "build", "--scale", "inf"], "--scale=inf"),
    (["data", "build", "--scale", "-1"], "--scale=-1"),
    (["data", "build", "--out", "afile"], "--out='afile' is a file"),
    (["run", "--out", "afile"], "--out='afile' is a file"),
    (["run", "--model", "nowhere"], "--model='nowhere'"),
    (["eval", "--ground-truth", "--json", "missing/results.json"], "--json='missing/results.json'"),
    (["eval", "--ground-truth", "--json", "folder"], "--json='folder' is a folder"),
    (["eval", "--model", "anygen-tiny", "--json", "afile/results.json"], "--json='afile/results.json'"),
    (["eval", "--model", "nowhere"], "--model='nowhere'"),
    (["eval", "--ground-truth", "--n", "0"], "--n=0"),
    (["eval", "--model", "anygen-tiny", "--num-candidates", "0"], "--num-candidates=0"),
    (["eval", "--ground-truth", "--num-candidates", "2"], "--num-candidates"),
    (["eval", "--ground-truth", "--matmul-dtype", "bfloat16"], "--matmul-dtype"),
    (["eval", "--model", "anygen-tiny", "--matmul-dtype", "float16"], "--matmul-dtype"),
    (["demo", "--port", "-1"], "--port=-1"),
    (["demo", "--port", "70000"], "--port=70000"),
    (["demo", "--port", "x"], "--port"),
    (["demo", "--max-file-size=banana"], "--max-file-size='banana'"),
    (["demo", "--max-file-size=0mb"], "--max-file-size='0mb'"),
    (["demo", "--model", "nowhere"], "--model='nowhere'"),
    (["train", "--config", SMOKE, "--steps", "3"], "--steps"),
])
def test_user_errors_are_one_line_before_any_work(argv: list[str], names: str, no_heavy_work: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file where a folder goes")
    (tmp_path / "folder").mkdir()
    try:
        code = cli.main(argv)
    except SystemExit as done:  # argparse's own errors
        code = done.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert names in err and "Traceback" not in err
    assert not (tmp_path / "afile").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]


def test_library_errors_reach_the_terminal_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  steps: [1\n")  # a YAML syntax error: the parser's message spans several lines
    assert cli.main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not plain YAML data" in err


def test_a_command_leaves_the_process_group_it_ran_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A multi-process command's group is destroyed before the interpreter exits (gloo's threads, left to the exit,
    can abort a finished process), also when the command fails."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        config = tmp_path / "bad.yaml"
        config.write_text("optim:\n  steps: [1\n")
        assert cli.main(["train", "--config", str(config)]) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_one_of_several_launched_processes_exits_without_the_interpreters_teardown(world_size: str,
                                                                                   tmp_path: Path) -> None:
    """Under a launcher (WORLD_SIZE > 1) the program flushes its output and exits with its status at once; alone it
    exits as any program does (exit handlers run)."""
    code = ("import atexit, sys; atexit.register(lambda: print('teardown ran', file=sys.stderr)); "
            "from anygen.cli import run; run(['train', '--config', 'missing.yaml'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "WORLD_SIZE": world_size})
    assert done.returncode == 2 and "config file 'missing.yaml' does not exist" in done.stderr
    assert ("teardown ran" in done.stderr) is (world_size == "1")

# ---- paths: the same meaning from every folder --------------------------------------------------------------------


@pytest.mark.parametrize("path", ANYGEN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_config_loads_into_its_dataclass_from_any_folder(path: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module, _, name = SCHEMAS[path.relative_to(CONFIGS).parts[0]].partition(":")
    schema = getattr(importlib.import_module(module), name)
    assert dataclasses.is_dataclass(schema(path) if inspect.isfunction(schema) else load_config(schema, path))


def test_every_config_folder_has_a_schema() -> None:
    assert {p.relative_to(CONFIGS).parts[0] for p in CONFIGS.rglob("*.yaml")} <= set(SCHEMAS)


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("path", ANYGEN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_configs_name_no_path_outside_the_project(path: Path) -> None:
    for value in _strings(yaml.safe_load(path.read_text())):
        assert not value.startswith(("/", "~")) and ".." not in Path(value).parts, f"{value!r} leaves the project"
        assert not value.startswith("anygen/assets"), \
            f"{value!r}: write {PACKAGE_PREFIX}{value[len('anygen/assets/'):]}"


def test_output_folders_default_to_runs(tmp_path: Path) -> None:
    parsers = {name: cli.command_parser(name, importlib.import_module(module))
               for name, (module, _) in cli.COMMANDS.items()}
    assert parsers["run"].parse_args([]).out == "runs/showcase"
    assert parsers["data"].parse_args(["build"]).out == "runs/corpus"
    for path in ANYGEN_CONFIGS:
        raw = yaml.safe_load(path.read_text())
        for out in (raw.get("output_dir"), (raw.get("train") or {}).get("out_dir")):
            assert out is None or out.startswith("runs/"), f"{path.name}: {out}"
        assert "final_dir" not in raw, f"{path.name}: the final model goes to <output_dir>/final"


def test_out_puts_the_whole_run_in_one_folder(tmp_path: Path) -> None:
    from anygen.training.cli_args import with_output_dir
    from anygen.training.decoder_recipe import DecoderTrainConfig

    parser = cli.command_parser("train-decoder", importlib.import_module("anygen.training.decoder_cli"))
    trial = parser.parse_args(["--config", DECODER, "--out", str(tmp_path / "trial")])
    config = with_output_dir(load_config(DecoderTrainConfig, DECODER), trial)
    assert (config.output_dir, config.final_dir) == (str(tmp_path / "trial"), str(tmp_path / "trial" / "final"))
    full = with_output_dir(load_config(DecoderTrainConfig, DECODER), parser.parse_args(["--config", DECODER]))
    assert (full.output_dir, full.final_dir) == ("runs/decoders/image-tiny", "runs/decoders/image-tiny/final")


def test_data_build_from_another_folder_writes_under_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "build", "--scale", "0", "--size", "text=2", "--splits", "train"]) == 0
    assert (tmp_path / "runs" / "corpus" / "manifest.json").is_file()
    assert "wrote 2 items" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_of_the_shipped_model_by_name_from_another_folder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "anygen", "eval", "--model", "anygen-tiny", "--suite", "caption",
                           "--n", "1", "--json", "caption.json"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"source": "anygen-tiny"' in (tmp_path / "caption.json").read_text()


# ---- every command runs from a folder outside the repository, with tiny settings -----------------------------------

ONE_STEP = {
    "train": ["--set", "optim.steps=1", "--set", "train.checkpoint_every=1"],
    "train-tokenizer": ["--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "train.eval_every=100"],
    "train-decoder": ["--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "train.eval_every=100"],
    "extend": ["--set", "optim.steps=1", "--set", "optim.batch_size=2", "--set", "optim.warmup_steps=0",
               "--set", "data.sizes={text_to_signal: 2, signal_to_text: 2}",
               "--set", "data.replay={seed: 0, image_size: 64, sizes: {text: 2}}"],
}


@pytest.mark.parametrize("argv, written", [
    (["train", "--config", SMOKE, *ONE_STEP["train"]], "runs/core-smoke/final/config.json"),
    (["train-tokenizer", "--config", TOKENIZER, *ONE_STEP["train-tokenizer"]],
     "runs/tokenizers/image-tiny-decoder/final/config.json"),
    (["train-decoder", "--config", DECODER, *ONE_STEP["train-decoder"]], "runs/decoders/image-tiny/final/config.json"),
    pytest.param([*EXTEND, *ONE_STEP["extend"]], "runs/extend-signal/final/config.json", marks=pytest.mark.slow),
    (["eval", "--ground-truth", "--suite", "caption", "--n", "1", "--json", "caption.json"], "caption.json"),
], ids=["train", "train-tokenizer", "train-decoder", "extend", "eval"])
def test_each_command_runs_to_the_end_from_another_folder(argv: list[str], written: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 0
    assert (tmp_path / written).is_file()


@pytest.mark.slow  # the showcase runs every task (tests/test_showcase.py checks it in the default suite)
def test_run_writes_a_showcase_from_another_folder(tiny_model: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_model.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--model", "model", "--out", "show"]) == 0
    assert (tmp_path / "show" / "index.html").is_file()


@pytest.mark.parametrize("command, path", [("serve", "/v1/models"), ("demo", "/")])
def test_servers_start_from_another_folder(command: str, path: str, tiny_model: Any, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "model")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "anygen", command, "--model", "model", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _answers(f"http://127.0.0.1:{port}{path}", server), server.stdout.read().decode()[-2000:]
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str, server: subprocess.Popen, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.5)
    return False


def test_the_training_data_fingerprint_holds_no_path(tmp_path: Path) -> None:
    """A run resumes after the repository moved: tokenizers enter the fingerprint by their files' digests."""
    from anygen.training.core_recipe import CoreTrainConfig, _fingerprint, _without_paths

    fingerprint = _fingerprint(load_config(CoreTrainConfig, CONFIGS / "train" / "tiny.yaml"))
    assert str(REPO) not in fingerprint and "pkg://" not in fingerprint
    saved_earlier = json.loads(fingerprint)  # what an earlier version saved: the tokenizers' absolute paths too
    saved_earlier["tokenizers"]["image"]["path"] = str(tmp_path / "old-checkout" / "tokenizers" / "image")
    assert _without_paths(json.dumps(saved_earlier)) == fingerprint
