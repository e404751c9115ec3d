"""Training past one process: the shipped launch configs, rows per process, the full-state checkpoint format, and
real two-process runs (gloo) of FSDP2 and DeepSpeed ZeRO-3 that stop, resume and export the model a one-process
reference computes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from anygen.config import load_config
from anygen.core import CoreConfig, build_core
from anygen.data.corpus import DataConfig
from anygen.errors import InvalidArgumentError
from anygen.model import AnyGen
from anygen.training import core_recipe as recipe
from anygen.training.checkpoint import latest_checkpoint, load_checkpoint
from anygen.training.core_data import RowKey, collate, split_by_length, target_tokens
from anygen.training.core_recipe import CoreTrainConfig
from anygen.training.distributed import _layer_classes, by_name, fill_blueprint, parameter_free_copy
from anygen.training.memory import STRATEGIES, memory_table, state_memory
from anygen.training.stream import StreamRows

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "train" / "smoke.yaml"
LAUNCH = ROOT / "configs" / "accelerate"
DOC = ROOT / "docs" / "training_at_scale.md"
RUN = ("optim.steps=6", "train.checkpoint_every=3", "train.log_every=1", "train.threads=1")


# ---- the shipped launch configs ---------------------------------------------------------------------------------
def _layer_class_names() -> set[str]:
    return {type(m).__name__ for m in build_core(CoreConfig(32, 1, 2, 1, 64, 64), 128, "sdpa").modules()}


@pytest.mark.parametrize("name", ["cpu-ddp", "fsdp2", "deepspeed-zero2", "deepspeed-zero3"])
def test_every_shipped_launch_config_parses_and_names_what_exists(name):
    path = LAUNCH / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))  # accelerate's own reader
    assert config.distributed_type.value == {"cpu-ddp": "MULTI_GPU", "fsdp2": "FSDP"}.get(name, "DEEPSPEED")
    if name == "fsdp2":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] in _layer_class_names()
        assert raw["mixed_precision"] == "bf16"
    if name.startswith("deepspeed"):
        ds_file = ROOT / raw["deepspeed_config"]["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
        assert "train_micro_batch_size_per_gpu" in ds and ds["bf16"]["enabled"] == "auto"
        assert raw["deepspeed_config"]["zero3_init_flag"] is False


def test_a_wrap_class_the_model_lacks_is_named_with_the_ones_it_has(tiny_model):
    with pytest.raises(InvalidArgumentError, match=r"cls_to_wrap='GPT2Block'.*\['LlamaDecoderLayer'\]"):
        _layer_classes(tiny_model, "GPT2Block")
    assert [c.__name__ for c in _layer_classes(tiny_model, "LlamaDecoderLayer")] == ["LlamaDecoderLayer"]


# ---- every process draws its own rows ---------------------------------------------------------------------------
def test_two_processes_draw_different_rows_and_never_each_others(tiny_model):
    source = StreamRows(DataConfig(image_size=32), tiny_model.processor, {"text_to_image": 1.0, "text": 1.0}, 0.0,
                        rows=4, seed=0, context=512)
    drawn = {p: [source.rows(RowKey(step, p)) for step in range(5)] for p in (0, 1)}
    assert all(a != b for a, b in zip(drawn[0], drawn[1]))
    targets = {p: {tuple(t) for rows in drawn[p] for _, t in rows} for p in (0, 1)}
    assert not targets[0] & targets[1]  # no item of one process is ever drawn by the other
    assert drawn[1] == [source.rows(RowKey(step, 1)) for step in range(5)]  # a pure function of (seed, step, process)


# ---- the full-state format --------------------------------------------------------------------------------------
def _stepped(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(recipe.param_groups(model, 0.1), lr=1e-3)
    ids = torch.randint(0, model.vocab.size, (2, 12))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


def test_positional_optimizer_state_of_earlier_checkpoints_converts_to_the_named_one(tiny_model):
    optimizer = _stepped(tiny_model.train())
    name_of = {id(p): n for n, p in tiny_model.named_parameters()}
    names = [[name_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    named = get_optimizer_state_dict(tiny_model, optimizer, options=StateDictOptions(full_state_dict=True))
    converted = by_name(optimizer.state_dict(), names)
    assert converted["state"].keys() == named["state"].keys()
    for key, state in named["state"].items():
        for field, value in state.items():
            torch.testing.assert_close(converted["state"][key][field], value, rtol=0, atol=0)
    assert [g["params"] for g in converted["param_groups"]] == [g["params"] for g in named["param_groups"]]
    assert by_name(named, names) is named


def test_a_blueprint_has_no_storage_and_fills_into_the_same_model(tiny_model):
    blueprint = parameter_free_copy(tiny_model)
    assert all(p.is_meta for p in blueprint.parameters())
    assert blueprint.core.lm_head.weight is blueprint.core.model.embed_tokens.weight  # ties survive
    filled = fill_blueprint(blueprint, {k: v.clone() for k, v in tiny_model.state_dict().items()})
    ids = torch.randint(0, tiny_model.vocab.size, (1, 10))
    torch.testing.assert_close(filled(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
    assert filled.core.lm_head.weight is filled.core.model.embed_tokens.weight
    assert filled.tokenizers.keys() == tiny_model.tokenizers.keys()


def test_sharded_runs_refuse_validation_on_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "strategy_of", lambda accelerator: "fsdp")  # as under `accelerate launch`
    config = load_config(CoreTrainConfig, SMOKE, [f"train.out_dir={tmp_path}", "train.eval_every=2"])
    with pytest.raises(InvalidArgumentError, match="train.eval_every=2"):
        recipe.main(config)
    assert not (tmp_path / "data").exists()  # refused before the BPE and the data


# ---- memory per process (docs/training_at_scale.md) -------------------------------------------------------------
def test_memory_per_process_follows_the_sharding():
    n = 7_000_000_000
    ddp, fsdp, zero2, zero3 = (state_memory(n, s, processes=8) for s in STRATEGIES)
    assert ddp.total == 16 * n and fsdp.total == 2 * n and zero3.total == 2 * n
    assert zero2.weights == 2 * n and zero2.optimizer == 12 * n / 8
    assert state_memory(n, "zero3", processes=1).total == ddp.total
    with pytest.raises(InvalidArgumentError, match="strategy='zero4'"):
        state_memory(n, "zero4")


def test_the_docs_memory_table_is_the_computed_one():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "__doc__"})
    assert memory_table({"135M": 135_000_000, "1B": 10**9, "7B": 7 * 10**9, "70B": 70 * 10**9}, 8) in text


# ---- two real processes over gloo -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: str, out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The documented command, on CPU processes: bf16 off, two processes."""
    sets = [arg for o in (*RUN, *overrides) for arg in ("--set", o)]
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(LAUNCH / config),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
               "-m", "anygen", "train", "--config", str(SMOKE), "--set", f"train.out_dir={out_dir}", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _one_process_reference(out_dir: Path, processes: int = 2) -> dict[str, torch.Tensor]:
    """The same schedule in one process: each step, process p's rows give process p's gradient; their mean is
    clipped and applied (what DDP, FSDP2 and ZeRO compute together)."""
    config = load_config(CoreTrainConfig, SMOKE, [f"train.out_dir={out_dir}", *RUN])
    model, source = recipe.model_and_rows(config, out_dir / "data", False)  # the run's BPE, the same seeded init
    optim = config.optim
    optimizer = torch.optim.AdamW(recipe.param_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas)
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = recipe.lr_schedule(optimizer, optim)
    for step in range(optim.steps):
        grads = []
        for process in range(processes):
            batches = [collate(part, model.vocab)
                       for part in split_by_length(source.rows(RowKey(step, process)), optim.grad_accum)]
            tokens = max(sum(target_tokens(b) for b in batches), 1)
            model.zero_grad(set_to_none=True)
            for b in batches:
                out = model(b.input_ids, b.attention_mask, b.labels, loss_weights=config.train.loss_weights)
                (out.loss * target_tokens(b) / tokens).backward()
            grads.append([p.grad.clone() for p in params])
        for p, *per_process in zip(params, *grads):
            p.grad = torch.stack(per_process).mean(0)
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        optimizer.step()
        scheduler.step()
    return model.state_dict()


def _stop_resume_and_compare(tmp_path: Path, config: str, strategy: str, *overrides: str) -> None:
    _launch(config, tmp_path, "train.max_minutes=1e-9", *overrides)  # out of time after the first step
    stopped = latest_checkpoint(tmp_path / "checkpoints")
    assert stopped.name == "step-00000001" and not (tmp_path / "final").exists()
    assert load_checkpoint(stopped)["distributed"] == {"strategy": strategy, "processes": 2}
    second = _launch(config, tmp_path, *overrides)  # the same command continues from step 1
    result = json.loads(second.stdout[second.stdout.index("{"):])
    assert result["step"] == 6 and result["complete"]
    exported = AnyGen.from_pretrained(result["final_dir"]).state_dict()
    reference = _one_process_reference(tmp_path)
    assert exported.keys() == reference.keys()
    for key, want in reference.items():
        torch.testing.assert_close(exported[key], want, rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.multiprocess
def test_fsdp2_on_two_processes_stops_resumes_and_exports_the_one_process_result(tmp_path):
    _stop_resume_and_compare(tmp_path, "fsdp2.yaml", "fsdp", "train.activation_checkpointing=true")


@pytest.mark.multiprocess
def test_deepspeed_zero3_on_two_processes_stops_resumes_and_exports_the_one_process_result(tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install -e '.[deepspeed]' --no-build-isolation)")
    _stop_resume_and_compare(tmp_path, "deepspeed-zero3.yaml", "deepspeed")
