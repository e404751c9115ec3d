"""Training logs: every recipe writes its losses to metrics.jsonl and to the accelerate trackers of log_with;
unknown or missing trackers are refused; the learning rate follows transformers' schedulers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from anygen.config import load_config
from anygen.decoders.diffusion import DiffusionDecoder
from anygen.errors import InvalidArgumentError
from anygen.tokenizers.image import ImageVQ, ImageVQConfig
from anygen.tokenizers.quantizer import QuantizerConfig
from anygen.training import core_recipe, decoder_recipe
from anygen.training import tokenizer as tokenizer_recipe
from anygen.training.core_metrics import tracker_names
from anygen.training.core_recipe import CoreTrainConfig
from anygen.training.decoder_recipe import DecoderTrainConfig
from anygen.training.schedule import SCHEDULERS, lr_scheduler
from anygen.training.tokenizer import TokenizerTrainConfig

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "configs" / "train" / "smoke.yaml"
TOKENIZER = ROOT / "configs" / "tokenizer" / "image-tiny.yaml"
DECODER = ROOT / "configs" / "decoder" / "image-tiny.yaml"
TINY_VQ = ["image.channels=[8, 16]", "image.res_blocks=0", "image.latent_dim=4", "image.image_size=[16, 16]",
           "data.image_size=[16, 16]", "image.quantizer.codebook_size=16", "image.quantizer.codebook_dim=4",
           "data.sources={scenes: 1.0}", "data.eval_sources={scenes: 1.0}", "data.eval_batches=1",
           "data.shapes_eval_per_category=0", "train.batch_size=4", "train.warmup_steps=2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(logs: Path, tag: str) -> dict[int, float]:
    """``tag``'s values by step, read back from the TensorBoard event files under ``logs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[int, float] = {}
    for directory in {p.parent for p in logs.rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(directory))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            found.update({e.step: e.value for e in events.Scalars(tag)})
    return found


def old_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The recipes' hand-written schedule before transformers' took its place."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        assert scheduler.optimizer.param_groups[0]["lr"] == out[-1]
        scheduler.optimizer.step()
        scheduler.step()
    return out


def schedule(name: str = "cosine_with_min_lr", total: int = 12, warmup: int = 3, start: int = 0,
             **kwargs: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1.0)
    scheduler = lr_scheduler(optimizer, name, base_lr=3e-4, warmup=warmup, total=total, min_lr_rate=0.1,
                             start=start, kwargs=kwargs)
    return rates(scheduler, total - start)


# ---- the core recipe: JSONL and TensorBoard ---------------------------------------------------------------------
def test_core_run_writes_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    config = load_config(CoreTrainConfig, CORE, [f"train.out_dir={tmp_path}", "optim.steps=3", "train.log_every=1",
                                                 "train.checkpoint_every=3", "train.threads=1",
                                                 "train.log_with=[jsonl, tensorboard]"])
    core_recipe.main(config)
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [1, 2, 3]
    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], lr=1.0)
    assert [r["lr"] for r in logged] == rates(core_recipe.lr_schedule(optimizer, config.optim), 3)
    written = scalars(tmp_path / "logs", "loss")
    assert sorted(written) == [1, 2, 3]
    assert [written[r["step"]] for r in logged] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert sorted(scalars(tmp_path / "logs", "losses/image")) == [1, 2, 3]


# ---- the tokenizer and decoder recipes write their losses ---------------------------------------------------------
def test_tokenizer_run_logs_its_losses_and_honours_log_with_and_the_scheduler(tmp_path):
    pytest.importorskip("tensorboard")
    overrides = [*TINY_VQ, f"output_dir={tmp_path}", f"final_dir={tmp_path / 'final'}", "train.steps=4",
                 "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4", "train.lr_scheduler=constant",
                 "train.log_with=[jsonl, tensorboard]"]
    tokenizer_recipe.main(load_config(TokenizerTrainConfig, TOKENIZER, overrides))
    logged = records(tmp_path)
    losses = [r for r in logged if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["cpu_s"] > 0 and r["samples_per_s"] > 0
               for r in losses)
    assert all(set(r["losses"]) == {"l1", "l2", "edge", "vq"} for r in losses)
    assert {r["lr"] for r in losses} == {load_config(TokenizerTrainConfig, TOKENIZER, overrides).train.lr}
    assert [r["step"] for r in logged if "eval" in r] == [4] and "psnr_scenes" in logged[-1]["eval"]
    assert sorted(scalars(tmp_path / "logs", "loss")) == [2, 4]
    assert sorted(scalars(tmp_path / "logs", "eval/psnr_scenes")) == [4]


def test_decoder_run_logs_its_loss(tmp_path):
    torch.manual_seed(0)
    vq = ImageVQ(ImageVQConfig(channels=[8, 16, 16], res_blocks=0, latent_dim=4, image_size=[16, 16],
                               quantizer=QuantizerConfig(codebook_size=16, codebook_dim=4)))
    vq.save_pretrained(tmp_path / "tok")
    overrides = [f"tokenizer={tmp_path / 'tok'}", f"output_dir={tmp_path / 'run'}", f"final_dir={tmp_path / 'final'}",
                 "decoder.patch_size=2",
                 "decoder.block_out_channels=[16, 32]", "decoder.attention_head_dim=8", "decoder.cond_dim=16",
                 "data.sources={scenes: 1.0}", "data.eval_sources={scenes: 1.0}", "data.eval_batches=1",
                 "data.eval_steps=1", "train.steps=3", "train.batch_size=2", "train.warmup_steps=1",
                 "train.log_every=1", "train.eval_every=100", "train.checkpoint_every=3"]
    decoder_recipe.main(load_config(DecoderTrainConfig, DECODER, overrides))
    losses = [r for r in records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in losses)
    assert losses[0]["lr"] == 0.0 < losses[1]["lr"]  # the warm-up starts at 0
    assert DiffusionDecoder.from_pretrained(tmp_path / "final").image_size == (16, 16)


# ---- refusals, before any work -----------------------------------------------------------------------------------
@pytest.mark.parametrize("config_class, path, key", [(CoreTrainConfig, CORE, "train.log_with"),
                                                     (TokenizerTrainConfig, TOKENIZER, "train.log_with")])
def test_an_unknown_tracker_is_refused_with_the_valid_names(config_class, path, key):
    with pytest.raises(InvalidArgumentError, match=key) as caught:
        load_config(config_class, path, [f"{key}=[jsonl, tensorbord]"])
    assert "'tensorbord'" in str(caught.value) and "'tensorboard'" in str(caught.value)
    assert "all" not in tracker_names()  # it would start every installed tracker, servers included


def test_a_tracker_whose_package_is_missing_is_refused_naming_the_package():
    missing = [kind.value for kind in LoggerType if kind.value != "all" and kind not in get_available_trackers()]
    if not missing:
        pytest.skip("every tracker accelerate knows is installed")
    with pytest.raises(InvalidArgumentError, match=f"train.log_with.*pip install {missing[0]}"):
        load_config(CoreTrainConfig, CORE, [f"train.log_with=[{missing[0]}]"])


@pytest.mark.parametrize("override, message", [
    ("optim.lr_scheduler=cosine_with_max_lr", "optim.lr_scheduler='cosine_with_max_lr' is unknown"),
    ("optim.lr_scheduler=reduce_lr_on_plateau", "adapts to a metric"),
    ("optim.lr_scheduler_kwargs={num_cyclez: 2}", "optim.lr_scheduler_kwargs"),
    ("optim.lr_scheduler=warmup_stable_decay", "num_decay_steps"),
])
def test_a_bad_scheduler_is_refused_naming_the_option(override, message):
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        load_config(CoreTrainConfig, CORE, [override])
    assert "cosine_with_min_lr" in str(caught.value) or "_kwargs" in str(caught.value)


# ---- the schedule -----------------------------------------------------------------------------------------------
def test_the_default_schedule_is_the_old_cosine_shifted_by_one_warm_up_step():
    total, warmup = 40, 5
    rates = schedule(total=total, warmup=warmup)
    old = [3e-4 * old_cosine(step, total, warmup, 0.1) for step in range(total)]
    assert rates[warmup:] == pytest.approx(old[warmup:], rel=1e-12, abs=0)  # every step after the warm-up
    assert rates[0] == 0.0 and rates[1:warmup] == pytest.approx(old[:warmup - 1], rel=1e-12, abs=0)
    assert rates[-1] == pytest.approx(3e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 34 / 35))), rel=1e-12)
    assert schedule(total=total, warmup=0) == pytest.approx([3e-4 * old_cosine(s, total, 0, 0.1)
                                                            for s in range(total)], rel=1e-12, abs=0)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_schedule_resumed_at_a_step_continues_exactly(name):
    kwargs = {"num_decay_steps": 4} if name == "warmup_stable_decay" else {}  # the one that needs an argument
    whole = schedule(name, **kwargs)
    assert len(set(whole)) > 1 or name == "constant"
    for start in (1, 3, 7, 11):
        assert schedule(name, start=start, **kwargs) == whole[start:]
