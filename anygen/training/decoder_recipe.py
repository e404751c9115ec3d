"""Recipe: train a :class:`~anygen.decoders.DiffusionDecoder` for a frozen ``ImageVQ`` with resumable checkpoints.

Run from the shell with ``anygen train-decoder --config configs/decoder/image-tiny.yaml [--set k=v ...]`` (or
``python -m anygen.training.decoder_cli``), or from Python with :func:`main`. The images are the tokenizer
recipe's sources (shape scenes, photo crops, or a folder; :mod:`anygen.training.sources`); every batch is a pure
function of ``(seed, step, process)``, so resuming from ``<output_dir>/checkpoints`` continues exactly where the run
stopped. Each step: encode the images with the frozen tokenizer, noise them (DDPM), drop the condition of some rows,
and regress the UNet's prediction. Evaluation renders held-out images from their codes (DDIM) and logs their PSNR
next to the tokenizer's own decoder's to ``<output_dir>/metrics.jsonl``.

Example:
    >>> from anygen.config import load_config
    >>> config = load_config(DecoderTrainConfig, "configs/decoder/image-tiny.yaml", ["train.steps=10"])
    >>> result = main(config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from anygen.decoders.diffusion import DiffusionDecoder, DiffusionDecoderConfig
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.tokenizers.image import ImageVQ
from anygen.training.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from anygen.training.sources import check_weights, image_batch
from anygen.training.tokenizer import TrainConfig, TrainResult
from anygen.training.tokenizer_tasks import EVAL_SEED, cosine_lr, psnr

IMAGE_SOURCES = ("scenes", "photos", "folder")


@dataclass
class DecoderDataConfig:
    """Training / evaluation images (source name -> mixing weight, as in the tokenizer recipe).

    ``eval_batches`` held-out batches of ``train.batch_size`` per evaluation source are rendered with
    ``eval_steps`` DDIM steps.
    """

    sources: dict[str, float] = field(default_factory=lambda: {"scenes": 3.0, "photos": 1.0})
    eval_sources: dict[str, float] = field(default_factory=lambda: {"scenes": 1.0, "photos": 1.0})
    folder: str | None = None
    eval_batches: int = 2
    eval_steps: int = 20

    def __post_init__(self) -> None:
        check_weights(self.sources, IMAGE_SOURCES, "data.sources")
        check_weights(self.eval_sources, IMAGE_SOURCES, "data.eval_sources")
        if self.eval_batches < 1 or self.eval_steps < 1:
            raise InvalidArgumentError(f"data.eval_batches={self.eval_batches} and data.eval_steps="
                                       f"{self.eval_steps} must be >= 1")


@dataclass
class DecoderTrainConfig:
    """Everything :func:`main` needs.

    ``tokenizer`` is the directory of the (frozen) ``ImageVQ`` whose codes the decoder learns to render;
    ``condition_dropout`` is the probability of training a row on the null condition (for guidance).
    """

    tokenizer: str = "anygen/assets/anygen-tiny/tokenizers/image"
    output_dir: str = "runs/decoder"
    final_dir: str | None = None
    decoder: DiffusionDecoderConfig = field(default_factory=DiffusionDecoderConfig)
    condition_dropout: float = 0.1
    data: DecoderDataConfig = field(default_factory=DecoderDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.condition_dropout < 1.0:
            raise InvalidArgumentError(f"condition_dropout={self.condition_dropout} must be in [0, 1)")
        if self.decoder.hidden_size:
            raise InvalidArgumentError(f"decoder.hidden_size={self.decoder.hidden_size}: this recipe trains on codes "
                                       "only (no core in the loop); set it to 0")


def main(config: DecoderTrainConfig) -> TrainResult:
    """Train (or resume) the decoder described by ``config``; returns the last evaluation."""
    # 1. Devices, threads, seeds, the frozen tokenizer and the decoder around it.
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    accelerator = Accelerator()
    set_seed(config.train.seed)
    decoder = DiffusionDecoder(config.decoder, _load_tokenizer(config.tokenizer))
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, betas=(0.9, 0.99), weight_decay=0.0)
    # 2. Resume from the last committed checkpoint (model, optimizer, RNG; data follows from the step).
    root = Path(config.output_dir) / "checkpoints"
    start = _resume(root, decoder, optimizer)
    model, optimizer = accelerator.prepare(decoder.train(), optimizer)
    # 3. The loop: images -> codes -> noisy images -> loss -> step; periodic evaluation and checkpoints.
    size, seed = decoder.image_size, config.train.seed + 7 * accelerator.process_index
    metrics: dict[str, float] = {}
    began = time.monotonic()
    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps,
               disable=not accelerator.is_main_process, desc="train diffusion decoder")
    step = start
    for step in bar:
        _set_lr(optimizer, config, step)
        images = image_batch(config.data.sources, config.train.batch_size, size, seed, step, "train",
                             config.data.folder).to(accelerator.device)
        loss = model(images, condition_dropout=config.condition_dropout)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, config.train.grad_clip)
        optimizer.step()
        bar.set_postfix({"loss": f"{float(loss.detach()):.4f}"}, refresh=False)
        done = step + 1
        out_of_time = bool(config.train.max_minutes) and time.monotonic() - began > 60 * config.train.max_minutes
        if done % config.train.eval_every == 0 or done == config.train.steps or out_of_time:
            metrics = _evaluate(accelerator, accelerator.unwrap_model(model), config, done)
        if done % config.train.checkpoint_every == 0 or done == config.train.steps or out_of_time:
            _commit(accelerator, root, done, accelerator.unwrap_model(model), optimizer, config.train.keep_last)
        if out_of_time:
            break
    else:
        step = config.train.steps - 1
    # 4. The final decoder, in the format users load with ``DiffusionDecoder.from_pretrained``.
    accelerator.wait_for_everyone()
    if config.final_dir and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(config.final_dir)
    return TrainResult(step=step + 1, metrics=metrics, final_dir=config.final_dir)


@torch.no_grad()
def evaluate(decoder: DiffusionDecoder, config: DecoderTrainConfig) -> dict[str, float]:
    """PSNR (dB) per source of held-out images rendered from their codes: with ``data.eval_steps`` DDIM steps
    (``psnr_*``), with one step (``psnr_1step_*``, the direct estimate) and by the tokenizer (``vq_psnr_*``)."""
    decoder.eval()
    metrics: dict[str, float] = {}
    for source in sorted(config.data.eval_sources):
        images = torch.cat([image_batch({source: 1.0}, config.train.batch_size, decoder.image_size, EVAL_SEED, i,
                                        "eval", config.data.folder) for i in range(config.data.eval_batches)])
        images = images.to(decoder.null_tokens.device)
        codes = decoder.tokenizer.encode(images)
        for steps in sorted({1, config.data.eval_steps}):
            rendered = decoder.decode(codes, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
            metrics[f"psnr_{source}" if steps == config.data.eval_steps else f"psnr_1step_{source}"] = psnr(
                rendered, images)
        metrics[f"vq_psnr_{source}"] = psnr(decoder.tokenizer.decode(codes), images)
    decoder.train()
    return metrics


def _load_tokenizer(path: str) -> ImageVQ:
    if not Path(path).is_dir():
        raise InvalidArgumentError(f"tokenizer={path!r} is not a directory; point it at a saved ImageVQ, e.g. "
                                   "anygen/assets/anygen-tiny/tokenizers/image (relative to the repository root)")
    try:
        return ImageVQ.from_pretrained(path)
    except CheckpointError as err:
        raise CheckpointError(f"tokenizer={path!r}: {err}") from err


def _resume(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    path = latest_checkpoint(root)
    if path is None:
        return 0
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"])
    return checkpoint_step(path)


def _set_lr(optimizer: torch.optim.Optimizer, config: DecoderTrainConfig, step: int) -> None:
    scale = cosine_lr(step, config.train.steps, config.train.warmup_steps, config.train.min_lr_ratio)
    for group in optimizer.param_groups:
        group["lr"] = config.train.lr * scale


def _commit(accelerator: Accelerator, root: Path, step: int, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, keep_last: int) -> None:
    """Only rank 0 writes, after every process has finished the step."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
        save_checkpoint(root, step, state, keep_last=keep_last)
    accelerator.wait_for_everyone()


def _evaluate(accelerator: Accelerator, decoder: DiffusionDecoder, config: DecoderTrainConfig,
              step: int) -> dict[str, float]:
    if not accelerator.is_main_process:
        return {}
    rng = capture_rng_state()  # evaluation must not change the training RNG stream
    metrics = evaluate(decoder, config)
    restore_rng_state(rng)
    record = {"step": step, **{k: round(v, 5) for k, v in metrics.items()}}
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(config.output_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    tqdm.write(json.dumps(record))
    return metrics
