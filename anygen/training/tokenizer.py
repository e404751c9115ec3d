"""Recipe: train a modality tokenizer (``ImageVQ``, ``AudioCodec`` or ``WaveformCodec``) with resumable checkpoints.

Run from the shell with ``anygen train-tokenizer --config configs/tokenizer/image-tiny.yaml [--set k=v ...]``
(or ``python -m anygen.training.tokenizer_cli``), or from Python with :func:`main`. accelerate picks the devices and
processes (``accelerate launch`` scales the same recipe out); every batch is a pure function of ``(seed, step,
process)``, so resuming from ``<output_dir>/checkpoints`` continues exactly where the run stopped. Losses go to
``<output_dir>/metrics.jsonl`` every ``train.log_every`` steps (and to the accelerate trackers ``train.log_with``
names), evaluations every ``train.eval_every`` steps.

Example:
    >>> from anygen.config import load_config
    >>> config = load_config(TokenizerTrainConfig, "configs/tokenizer/image-tiny.yaml", ["train.steps=10"])
    >>> result = main(config)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from anygen.config import to_dict
from anygen.errors import InvalidArgumentError
from anygen.tokenizers.audio import AudioCodecConfig
from anygen.tokenizers.image import ImageVQConfig
from anygen.tokenizers.waveform import WaveformCodecConfig
from anygen.training.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from anygen.training.core_metrics import LossWindow, MetricsLogger, check_log_with, tracking
from anygen.training.schedule import check_scheduler, lr_scheduler
from anygen.training.sources import check_weights
from anygen.training.tokenizer_tasks import PARTS, TASKS

SOURCES = {"image": ("scenes", "photos", "folder"), "audio": ("speech", "melodies", "folder")}


@dataclass
class DataConfig:
    """Training data. ``sources`` / ``eval_sources`` map source names to mixing weights (see ``sources.py``);
    ``shapes_eval_per_category`` ShapesEval prompts per category judge image reconstructions (0: off)."""

    sources: dict[str, float] = field(default_factory=lambda: {"scenes": 3.0, "photos": 1.0})
    eval_sources: dict[str, float] = field(default_factory=lambda: {"scenes": 1.0, "photos": 1.0})
    folder: str | None = None
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    clip_seconds: float = 1.0
    eval_batches: int = 4
    shapes_eval_per_category: int = 8

    def __post_init__(self) -> None:
        if self.clip_seconds <= 0 or self.clip_seconds > 60:
            raise InvalidArgumentError(f"data.clip_seconds={self.clip_seconds} must be in (0, 60]")
        if self.eval_batches < 1:
            raise InvalidArgumentError(f"data.eval_batches={self.eval_batches} must be >= 1")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``threads=0`` leaves torch's default; ``max_minutes=0`` means no time limit.
    The rate follows transformers' scheduler ``lr_scheduler`` (default: linear warm-up over ``warmup_steps``, then
    cosine decay from ``lr`` to ``min_lr_ratio * lr``; :mod:`anygen.training.schedule`). Every ``log_every`` steps
    the mean losses go to ``metrics.jsonl`` and the trackers of ``log_with`` (:mod:`anygen.training.core_metrics`)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    checkpoint_every: int = 250
    keep_last: int = 2
    seed: int = 0
    threads: int = 0
    max_minutes: float = 0.0
    log_every: int = 10
    log_with: list[str] = field(default_factory=lambda: ["jsonl"])
    lr_scheduler: str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, key) < 1:
                raise InvalidArgumentError(f"train.{key}={getattr(self, key)} must be >= 1")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.threads < 0:
            raise InvalidArgumentError(f"train.lr={self.lr} must be > 0, train.warmup_steps >= 0, "
                                       f"train.min_lr_ratio in [0, 1], train.threads >= 0")
        check_log_with("train.log_with", self.log_with)
        check_scheduler("train.lr_scheduler", self.lr_scheduler, self.lr_scheduler_kwargs)


@dataclass
class LossConfig:
    """Weights of the reconstruction losses (``edge``: image gradients / mel time differences)."""

    l1: float = 1.0
    l2: float = 1.0
    edge: float = 0.5


@dataclass
class WaveformLossConfig:
    """Weights of the waveform codec's losses: ``waveform`` (L1 on the samples), ``mel`` (L1 between natural-log mel
    spectrograms with ``n_mels`` bands) and ``stft`` (L1 between natural-log STFT power), the last two averaged over
    the FFT sizes ``fft_sizes`` (hop: a quarter of the size); the quantiser's commitment loss is always added."""

    waveform: float = 1.0
    mel: float = 1.0
    stft: float = 1.0
    fft_sizes: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    n_mels: int = 64

    def __post_init__(self) -> None:
        if min(self.waveform, self.mel, self.stft) < 0:
            raise InvalidArgumentError(f"waveform_loss.waveform={self.waveform}, waveform_loss.mel={self.mel} and "
                                       f"waveform_loss.stft={self.stft} must be >= 0")
        if not self.fft_sizes or any(not 64 <= n <= 8192 for n in self.fft_sizes) or self.n_mels < 1:
            raise InvalidArgumentError(f"waveform_loss.fft_sizes={self.fft_sizes} must be a non-empty list of sizes "
                                       f"in [64, 8192] and waveform_loss.n_mels={self.n_mels} >= 1")


@dataclass
class TokenizerTrainConfig:
    """Everything :func:`main` needs. ``modality`` picks the task: ``image`` trains an ``ImageVQ`` (section
    ``image``, losses ``loss``); ``audio`` trains the codec named by ``audio_codec``: ``spectrogram`` an
    ``AudioCodec`` (sections ``audio``, ``loss``) or ``waveform`` a ``WaveformCodec`` (``waveform``,
    ``waveform_loss``). The other sections are ignored.

    ``init_from`` starts from a saved codec of that kind (its own architecture replaces the section's) and
    ``freeze`` lists parts (``encoder``, ``quantizer``, ``decoder``) that do not train: ``[encoder, quantizer]``
    fine-tunes the decoder while every code stays the same, so a core trained on the codes keeps working.
    ``warm_start`` instead builds the section's architecture and copies in every tensor of a saved codec of the same
    class whose name and shape match; the rest start fresh (e.g. a quantiser with a new ``codebook_dim`` under a
    trained encoder and decoder)."""

    modality: Literal["image", "audio"] = "image"
    audio_codec: Literal["spectrogram", "waveform"] = "spectrogram"
    output_dir: str = "runs/tokenizer"
    final_dir: str | None = None
    image: ImageVQConfig = field(default_factory=ImageVQConfig)
    audio: AudioCodecConfig = field(default_factory=AudioCodecConfig)
    waveform: WaveformCodecConfig = field(default_factory=WaveformCodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    waveform_loss: WaveformLossConfig = field(default_factory=WaveformLossConfig)
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    warm_start: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.freeze) - set(PARTS))
        if unknown or len(set(self.freeze)) == len(PARTS):
            raise InvalidArgumentError(f"freeze={self.freeze} must name some (not all) of {list(PARTS)}")
        if self.freeze and not self.init_from:
            raise InvalidArgumentError(f"freeze={self.freeze} needs init_from: the directory of a trained codec")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise InvalidArgumentError(f"init_from={self.init_from!r} is not a directory written by save_pretrained")
        if self.warm_start is not None:
            if self.init_from is not None:
                raise InvalidArgumentError("warm_start and init_from exclude each other: init_from keeps the saved "
                                           "architecture, warm_start the config's")
            if not (Path(self.warm_start) / "config.json").is_file():
                raise InvalidArgumentError(f"warm_start={self.warm_start!r} is not a directory written by "
                                           "save_pretrained")
        if self.modality not in SOURCES:
            raise InvalidArgumentError(f"modality={self.modality!r} must be one of {list(SOURCES)}")
        check_weights(self.data.sources, SOURCES[self.modality], "data.sources")
        check_weights(self.data.eval_sources, SOURCES[self.modality], "data.eval_sources")
        if self.modality == "image" and list(self.data.image_size) != list(self.image.image_size):
            raise InvalidArgumentError(f"data.image_size={self.data.image_size} must equal "
                                       f"image.image_size={self.image.image_size}")

    @property
    def task(self) -> str:
        """Key of the task in ``TASKS``: ``image``, ``audio`` (spectrogram codec) or ``waveform``."""
        return "waveform" if self.modality == "audio" and self.audio_codec == "waveform" else self.modality


@dataclass
class TrainResult:
    """What a finished (or time-limited) run reached."""

    step: int
    metrics: dict[str, float]
    final_dir: str | None


def main(config: TokenizerTrainConfig) -> TrainResult:
    """Train (or resume) the tokenizer described by ``config``; returns the last evaluation."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    set_seed(config.train.seed)
    return train_task(TASKS[config.task](config), config.train, config.output_dir, config.final_dir,
                      desc=f"train {config.modality} tokenizer", hparams=to_dict(config))


def train_task(task: Any, train: TrainConfig, output_dir: str, final_dir: str | None, desc: str,
               hparams: dict[str, Any] | None = None) -> TrainResult:
    """The loop shared by the recipes that train one module on generated batches (tokenizers, decoders).

    ``task`` has ``build_model()``, ``batch(step, split, shard)``, ``losses(model, batch) -> StepLosses`` and
    ``evaluate(model) -> dict``; the model must have ``save_pretrained``. Checkpoints go to
    ``<output_dir>/checkpoints``, losses and evaluations to ``<output_dir>/metrics.jsonl`` (and the trackers of
    ``train.log_with``, which also receive ``hparams``, the run's config), the final model to ``final_dir``.
    Call it after seeding: the model's initialisation draws from torch's global RNG.
    """
    # 1. The accelerator (and its trackers), the model and its optimizer (frozen parts, e.g. a decoder's tokenizer,
    #    are left out).
    out = Path(output_dir)
    accelerator = Accelerator(**tracking(train.log_with, out))
    logger = MetricsLogger(accelerator, out, train.log_with, hparams)
    model = task.build_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, betas=(0.9, 0.99), weight_decay=0.0)
    # 2. Resume from the last committed checkpoint (model, optimizer, RNG; data follows from the step).
    root = out / "checkpoints"
    start = _resume(root, model, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = lr_scheduler(optimizer, train.lr_scheduler, base_lr=train.lr, warmup=train.warmup_steps,
                             total=train.steps, min_lr_rate=train.min_lr_ratio, start=start,
                             kwargs=train.lr_scheduler_kwargs)
    # 3. The loop: batch -> loss -> step at the scheduler's rate; periodic logs, evaluations and checkpoints.
    logger.drop_after(start)
    window = LossWindow(unit="samples")
    metrics: dict[str, float] = {}
    began = time.monotonic()
    bar = tqdm(range(start, train.steps), initial=start, total=train.steps,
               disable=not accelerator.is_main_process, desc=desc)
    step = start
    for step in bar:
        lr = scheduler.get_last_lr()[0]
        waited = time.monotonic()
        batch = task.batch(step, "train", accelerator.process_index).to(accelerator.device)
        window.wait(time.monotonic() - waited)
        losses = task.losses(model, batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(losses.total)
        accelerator.clip_grad_norm_(trainable, train.grad_clip)
        optimizer.step()
        scheduler.step()
        loss = float(losses.total.detach())
        window.add(loss, losses.logs, len(batch))
        bar.set_postfix({k: f"{v:.4f}" for k, v in {"loss": loss, **losses.logs}.items()}, refresh=False)
        done = step + 1
        out_of_time = bool(train.max_minutes) and time.monotonic() - began > 60 * train.max_minutes
        if done % train.log_every == 0 or done == train.steps or out_of_time:
            logger.write({"step": done, "lr": lr, **window.flush(accelerator), "cpu_s": time.process_time()})
        if done % train.eval_every == 0 or done == train.steps or out_of_time:
            metrics = _evaluate(accelerator, task, model, logger, done)
        if done % train.checkpoint_every == 0 or done == train.steps or out_of_time:
            _commit(accelerator, root, done, model, optimizer, train.keep_last)
        if out_of_time:
            break
    else:
        step = train.steps - 1
    logger.close()
    # 4. The final model, in the same format users load with ``from_pretrained``.
    return TrainResult(step=step + 1, metrics=metrics, final_dir=_save_final(accelerator, model, final_dir))


def _resume(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    path = latest_checkpoint(root)
    if path is None:
        return 0
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"])
    return checkpoint_step(path)


def _commit(accelerator: Accelerator, root: Path, step: int, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, keep_last: int) -> None:
    """Only rank 0 writes, after every process has finished the step."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": capture_rng_state()}
        save_checkpoint(root, step, state, keep_last=keep_last)
    accelerator.wait_for_everyone()


def _evaluate(accelerator: Accelerator, task: Any, model: torch.nn.Module, logger: MetricsLogger,
              step: int) -> dict[str, float]:
    if not accelerator.is_main_process:
        return {}
    rng = capture_rng_state()  # evaluation must not change the training RNG stream
    metrics = task.evaluate(accelerator.unwrap_model(model))
    restore_rng_state(rng)
    record = {"step": step, "eval": {k: round(v, 5) for k, v in metrics.items()}}
    logger.write(record)
    tqdm.write(json.dumps(record))
    return metrics


def _save_final(accelerator: Accelerator, model: torch.nn.Module, final_dir: str | None) -> str | None:
    accelerator.wait_for_everyone()
    if final_dir and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(final_dir)
    return final_dir
