"""Recipe: train a :class:`~anygen.decoders.DiffusionDecoder` or an :class:`~anygen.decoders.UpscaleDecoder` for a
frozen ``ImageVQ`` with resumable checkpoints (a config's ``kind``: ``diffusion``, the default, or ``upscale``).

Run from the shell with ``anygen train-decoder --config configs/decoder/image-tiny.yaml [--set k=v ...]`` (or
``python -m anygen.training.decoder_cli``), or from Python with :func:`main`. The images are the tokenizer
recipe's sources (shape scenes, photo crops, or a folder; :mod:`anygen.training.sources`), drawn at the decoder's
size; every batch is a pure function of ``(seed, step, process)``, so resuming from ``<output_dir>/checkpoints``
continues exactly where the run stopped. Each step encodes the images with the frozen tokenizer (area-downsampled
first when the decoder renders at ``decoder.upscale`` times the tokenizer's size). A diffusion decoder then noises
them (DDPM), drops the condition of some rows and regresses the UNet's prediction; an upscale decoder regresses
its rendering of the codes onto the images. The loss goes to ``<output_dir>/metrics.jsonl`` every
``train.log_every`` steps (and to the trackers of ``train.log_with``). Evaluation renders held-out images from
their codes and logs their PSNR next to the tokenizer's own decoder's there too.

Example:
    >>> from anygen.config import load_config
    >>> config = decoder_train_config("configs/decoder/image-tiny.yaml", ["train.steps=10"])
    >>> result = main(config)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import set_seed

from anygen.assets import resolve_path
from anygen.config import from_dict, read_config, to_dict
from anygen.decoders.diffusion import DiffusionDecoder, DiffusionDecoderConfig
from anygen.decoders.upscale import UpscaleDecoder, UpscaleDecoderConfig
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.tokenizers.image import ImageVQ
from anygen.training.sources import check_weights, image_batch
from anygen.training.tokenizer import TrainConfig, TrainResult, train_task
from anygen.training.tokenizer_tasks import EVAL_SEED, StepLosses, psnr

IMAGE_SOURCES = ("scenes", "photos", "folder")


@dataclass
class DecoderDataConfig:
    """Training / evaluation images (source name -> mixing weight, as in the tokenizer recipe).

    ``eval_batches`` held-out batches of ``train.batch_size`` per evaluation source are rendered (by a diffusion
    decoder with ``eval_steps`` DDIM steps).
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
    """Everything :func:`main` needs to train a diffusion decoder.

    ``tokenizer`` is the directory of the (frozen) ``ImageVQ`` whose codes the decoder learns to render;
    ``condition_dropout`` is the probability of training a row on the null condition (for guidance).
    """

    kind: Literal["diffusion"] = "diffusion"
    tokenizer: str = "pkg://anygen-tiny/tokenizers/image"
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


@dataclass
class UpscaleTrainConfig:
    """Everything :func:`main` needs to train an upscale decoder (``kind: upscale`` in a config file)."""

    kind: Literal["upscale"] = "upscale"
    tokenizer: str = "pkg://anygen-tiny/tokenizers/image"
    output_dir: str = "runs/decoder-upscale"
    final_dir: str | None = None
    decoder: UpscaleDecoderConfig = field(default_factory=UpscaleDecoderConfig)
    data: DecoderDataConfig = field(default_factory=DecoderDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


KINDS = {"diffusion": DecoderTrainConfig, "upscale": UpscaleTrainConfig}


def decoder_train_config(path: str | Path | None = None,
                         overrides: list[str] | None = None) -> DecoderTrainConfig | UpscaleTrainConfig:
    """The config of a YAML file plus ``key=value`` overrides, of the class its ``kind`` names (default
    ``diffusion``)."""
    raw = read_config(path, overrides)
    kind = raw.get("kind", "diffusion")
    if kind not in KINDS:
        raise InvalidArgumentError(f"kind={kind!r} must be one of {sorted(KINDS)}")
    return from_dict(KINDS[kind], raw)


def main(config: DecoderTrainConfig | UpscaleTrainConfig) -> TrainResult:
    """Train (or resume) the decoder described by ``config``; returns the last evaluation."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    set_seed(config.train.seed)
    return train_task(DecoderTask(config), config.train, config.output_dir, config.final_dir,
                      desc=f"train {config.kind} decoder", hparams=to_dict(config))


class DecoderTask:
    """What the shared loop (:func:`~anygen.training.tokenizer.train_task`) needs to train a decoder: images ->
    codes of the frozen tokenizer -> noisy images -> the DDPM loss; or, for an upscale decoder, the squared error
    of its rendering of the codes."""

    def __init__(self, config: DecoderTrainConfig | UpscaleTrainConfig) -> None:
        self.config = config
        self.image_size: tuple[int, int] = (0, 0)

    def build_model(self) -> DiffusionDecoder | UpscaleDecoder:
        cls = UpscaleDecoder if self.config.kind == "upscale" else DiffusionDecoder
        decoder = cls(self.config.decoder, _load_tokenizer(self.config.tokenizer))
        self.image_size = decoder.image_size
        return decoder.train()

    def batch(self, step: int, split: str = "train", shard: int = 0) -> torch.Tensor:
        data, train = self.config.data, self.config.train
        return image_batch(data.sources, train.batch_size, self.image_size, train.seed + 7 * shard, step, split,
                           data.folder)

    def losses(self, model: torch.nn.Module, batch: torch.Tensor) -> StepLosses:
        if self.config.kind == "upscale":
            return StepLosses(total=model(batch), logs={})
        loss = model(batch, condition_dropout=self.config.condition_dropout)
        return StepLosses(total=loss, logs={})  # one term: the loop logs it as ``loss``

    def evaluate(self, model: DiffusionDecoder | UpscaleDecoder) -> dict[str, float]:
        return evaluate(model, self.config)


@torch.no_grad()
def evaluate(decoder: DiffusionDecoder | UpscaleDecoder,
             config: DecoderTrainConfig | UpscaleTrainConfig) -> dict[str, float]:
    """PSNR (dB) per source of held-out images rendered from their codes: by an upscale decoder (``psnr_*``), or by a
    diffusion decoder with ``data.eval_steps`` DDIM steps (``psnr_*``) and with one step (``psnr_1step_*``, the
    direct estimate); and by the tokenizer (``vq_psnr_*``; upsampled bicubically to the decoder's size when it
    renders larger than the tokenizer)."""
    decoder.eval()
    metrics: dict[str, float] = {}
    for source in sorted(config.data.eval_sources):
        images = torch.cat([image_batch({source: 1.0}, config.train.batch_size, decoder.image_size, EVAL_SEED, i,
                                        "eval", config.data.folder) for i in range(config.data.eval_batches)])
        images = images.to(next(decoder.parameters()).device)
        codes = decoder.encode(images)
        if isinstance(decoder, UpscaleDecoder):
            metrics[f"psnr_{source}"] = psnr(decoder.decode(codes), images)
        else:
            for steps in sorted({1, config.data.eval_steps}):
                rendered = decoder.decode(codes, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
                metrics[f"psnr_{source}" if steps == config.data.eval_steps else f"psnr_1step_{source}"] = psnr(
                    rendered, images)
        metrics[f"vq_psnr_{source}"] = psnr(decoder.reconstruction(codes), images)
    decoder.train()
    return metrics


def _load_tokenizer(path: str) -> ImageVQ:
    path = resolve_path(path)  # the default names the shipped tokenizer as pkg://...
    if not Path(path).is_dir():
        raise InvalidArgumentError(f"tokenizer={path!r} is not a directory; point it at a saved ImageVQ, e.g. "
                                   "pkg://anygen-tiny/tokenizers/image (the shipped one)")
    try:
        return ImageVQ.from_pretrained(path)
    except CheckpointError as err:
        raise CheckpointError(f"tokenizer={path!r}: {err}") from err
