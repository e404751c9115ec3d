"""Recipe: give a trained model a new modality and teach it (``anygen extend``).

Run ``anygen extend --model DIR --modality signal --config configs/extend/signal.yaml [--set key=value ...]``
(or ``python -m anygen.training.extend_cli ...``, which ``accelerate launch`` can start on several processes),
or call :func:`main`.

1. The model at ``DIR`` gets the modality append-only (:func:`anygen.extension.add_modality`): new specials and
   codebook spans after every existing id, new embedding / output rows at the mean of the old ones.
2. Its training corpus is the modality's own tasks (built by the function :data:`CORPORA` registers for it)
   mixed with a replay of the old tasks (``data.replay``, a :class:`~anygen.data.corpus.DataConfig`), sampled
   ``data.replay_fraction`` of the time so that old abilities are rehearsed.
3. ``mode`` picks what trains:

   - ``rows``: only the new embedding / output rows. The shipped core ties its input and output embeddings, so
     the one shared matrix trains with a gradient mask that zeroes the old rows (and no weight decay on it):
     every old parameter stays bit-identical.
   - ``lora``: the new rows (as in ``rows``) plus LoRA adapters (peft) on the core's attention and MLP
     projections (``lora.targets``); the adapters are merged before saving, so the result is a plain AnyGen.
   - ``gated``: the new rows plus LoRA-shaped adapters that act from a row's first token of the new modality on
     (:mod:`anygen.gated_lora`): a sequence without the new modality runs the unchanged core, so every old task
     computes exactly what it computed before, while the new modality and the text after it get adapted weights.
     The adapters are saved beside the core (``adapters.safetensors``), not merged.
   - ``full``: every parameter (full fine-tuning).

Everything else -- accelerate, the progress bar, ``metrics.jsonl`` and ``train.log_with``'s trackers, atomic
checkpoints and resume, the learning-rate schedule -- is the core recipe's
:func:`~anygen.training.core_recipe.train_loop`. The model lands in ``<train.out_dir>/final``.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from anygen.gated_lora import LLAMA_PROJECTIONS, AdapterSpec, GatedAdapters
from anygen.config import to_dict
from anygen.data.corpus import TASKS, DataConfig, build_split
from anygen.errors import CheckpointError, InvalidArgumentError, check_range
from anygen.extension import add_modality
from anygen.model import AnyGen
from anygen.tokenizers.base import ModalityTokenizer
from anygen.tokenizers.registry import tokenizer_class
from anygen.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from anygen.training.core_data import TASK_MODALITIES, TokenizedCorpus, tokenize_corpus
from anygen.training.stream import CorpusRows
from anygen.training.core_recipe import (
    CoreTrainResult,
    OptimSection,
    TrainSection,
    check_names,
    directory_digest,
    param_groups,
    start_run,
    train_loop,
)

Item = dict[str, Any]
CorpusBuilder = Callable[[dict[str, int], str, int], list[Item]]
# modality name -> builder of its tasks' items: ``build(sizes, split, seed) -> items`` (see anygen.data.signals).
CORPORA: dict[str, str | CorpusBuilder] = {"signal": "anygen.data.signals:build_split"}


def register_corpus(modality: str, builder: CorpusBuilder) -> None:
    """Make ``anygen.training.extend_recipe.main`` build ``modality``'s tasks with ``builder(sizes, split, seed)``."""
    CORPORA[modality] = builder


def corpus_builder(modality: str) -> CorpusBuilder:
    """The registered builder of ``modality``'s tasks; unknown modalities raise naming the registered ones."""
    entry = CORPORA.get(modality)
    if entry is None:
        raise InvalidArgumentError(f"modality.name={modality!r} has no corpus builder; registered: {sorted(CORPORA)} "
                                   "(call anygen.training.extend_recipe.register_corpus first)")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


@dataclass
class ModalitySection:
    """The new modality: its ``name`` and its tokenizer, a class registered in ``anygen.tokenizers.registry``
    built from ``options`` (weight-free tokenizers) or loaded from ``path`` (a ``save_pretrained`` directory)."""

    name: str = ""
    tokenizer: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise InvalidArgumentError(f"modality.name={self.name!r} must be an identifier such as 'signal'")
        if not self.tokenizer:
            raise InvalidArgumentError("modality.tokenizer must name a registered tokenizer class, "
                                       "e.g. SignalTokenizer")
        if self.path is not None and self.options:
            raise InvalidArgumentError("modality.options and modality.path exclude each other")

    def build(self) -> ModalityTokenizer:
        """The tokenizer, checked to tokenize ``name``."""
        try:
            cls = tokenizer_class(self.tokenizer)
        except CheckpointError as err:
            raise InvalidArgumentError(f"modality.tokenizer: {err}") from err
        try:
            tok = cls.from_pretrained(self.path) if self.path is not None else cls(**self.options)
        except TypeError as err:
            raise InvalidArgumentError(f"modality.options={self.options}: {err}") from err
        if getattr(tok, "modality", self.name) != self.name:
            raise InvalidArgumentError(f"modality.name={self.name!r} but {self.tokenizer} tokenizes "
                                       f"{tok.modality!r}")
        return tok


@dataclass
class LoraSection:
    """Adapters for ``mode: lora`` and ``mode: gated``: rank, scale ``alpha / rank``, dropout (``lora`` only), and
    the module names adapted."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))

    def __post_init__(self) -> None:
        check_range("lora.rank", self.rank, 1, 4096)
        check_range("lora.alpha", self.alpha, 0.0, None, low_inclusive=False)
        check_range("lora.dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        if not self.targets:
            raise InvalidArgumentError(f"lora.targets must name at least one module, e.g. {LLAMA_PROJECTIONS}")


def _default_replay() -> DataConfig:
    return DataConfig(sizes={"text_to_image": 200, "image_to_text": 100, "edit": 60, "text_to_speech": 40,
                             "speech_to_text": 40, "text_to_melody": 40, "melody_to_text": 40, "interleaved": 30,
                             "text": 50}, eval_fraction=0.0)


@dataclass
class ExtendDataSection:
    """``sizes``: items per task of the new modality (built from ``seed``); ``replay``: the old tasks' corpus,
    sampled ``replay_fraction`` of the time (tasks within each side in proportion to their sizes);
    ``cond_dropout``: condition dropout of the replayed guided tasks."""

    seed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    replay: DataConfig = field(default_factory=_default_replay)
    replay_fraction: float = 0.25
    cond_dropout: float = 0.1

    def __post_init__(self) -> None:
        for task, n in self.sizes.items():
            check_range(f"data.sizes.{task}", n, 0, 10_000_000)
            if task in TASKS:
                raise InvalidArgumentError(f"data.sizes.{task}: {task!r} is an old task; list it under data.replay")
        if sum(self.sizes.values()) <= 0:
            raise InvalidArgumentError("data.sizes must give the new modality's tasks some items, "
                                       "e.g. {text_to_signal: 1000}")
        check_range("data.replay_fraction", self.replay_fraction, 0.0, 1.0, high_inclusive=False)
        if self.replay_fraction > 0 and sum(self.replay.sizes.values()) <= 0:
            raise InvalidArgumentError(f"data.replay_fraction={self.replay_fraction} but data.replay.sizes is empty")
        check_range("data.cond_dropout", self.cond_dropout, 0.0, 2 / 3)

    def weights(self) -> dict[str, float]:
        """Sampling weight of every task, new and replayed (they sum to 1)."""
        new, old = sum(self.sizes.values()), sum(self.replay.sizes.values())
        out = {t: (1 - self.replay_fraction) * n / new for t, n in self.sizes.items()}
        if self.replay_fraction > 0:
            out.update({t: self.replay_fraction * n / old for t, n in self.replay.sizes.items()})
        return out


@dataclass
class ExtendConfig:
    """Everything :func:`main` needs (YAML files in ``configs/extend/``; ``model`` comes from ``--model``)."""

    model: str | None = None
    modality: ModalitySection = field(default_factory=lambda: ModalitySection("signal", "SignalTokenizer"))
    mode: Literal["rows", "lora", "gated", "full"] = "lora"
    lora: LoraSection = field(default_factory=LoraSection)
    data: ExtendDataSection = field(default_factory=lambda: ExtendDataSection(sizes={"text_to_signal": 1000}))
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    attn_implementation: Literal["sdpa", "eager", "xformers"] = "sdpa"

    def __post_init__(self) -> None:
        if self.mode == "gated" and self.lora.dropout > 0:
            raise InvalidArgumentError(f"lora.dropout={self.lora.dropout}: gated adapters take no dropout (use 0)")


def main(config: ExtendConfig) -> CoreTrainResult:
    """Extend ``config.model`` with ``config.modality`` and train it as ``config.mode`` says (or resume)."""
    began = time.monotonic()
    # 0. Everything that can be checked cheaply fails before any heavy work.
    if config.model is None or not Path(config.model).is_dir():
        raise InvalidArgumentError(f"model={config.model!r} must be the directory of a saved model (--model DIR)")
    tokenizer = config.modality.build()
    builder = corpus_builder(config.modality.name)
    # 1. Devices and processes, metrics.
    accelerator, logger = start_run(config.optim, config.train, to_dict(config))
    # 2. The extended model and the tokenized corpus (built and committed by the main process).
    with accelerator.main_process_first():
        model, corpus = _model_and_corpus(config, tokenizer, builder, Path(config.train.out_dir) / "data",
                                          accelerator.is_main_process)
    optimizer = torch.optim.AdamW(_trainable_groups(model, config), lr=config.optim.lr,
                                  betas=tuple(config.optim.betas))
    # 3-5. The core recipe's loop: resume, train, commit, save the merged model.
    source = CorpusRows(corpus, config.data.weights(), config.data.cond_dropout,
                        config.optim.batch_size * config.optim.grad_accum, config.train.seed,
                        model.core.config.max_position_embeddings)
    return train_loop(accelerator, model, optimizer, source, logger, optim=config.optim, train=config.train,
                      began=began, desc=f"extend {config.modality.name} ({config.mode})", export=export_model)


# ---- 2. the model and what trains ---------------------------------------------------------------------------
def build_model(config: ExtendConfig, tokenizer: ModalityTokenizer) -> AnyGen:
    """``config.model`` with the new modality appended and, in ``lora`` / ``gated`` mode, adapters added (seeded)."""
    base = AnyGen.from_pretrained(config.model, config.attn_implementation)
    old_rows = base.vocab.size
    model = add_modality(base, tokenizer, config.modality.name)
    check_names(config.train.loss_weights, model.vocab.modality_names, "train.loss_weights")
    torch.manual_seed(config.train.seed)
    if config.mode == "lora":
        model.core = _with_lora(model.core, config.lora)
    new_adapter = None
    if config.mode == "gated":
        spec = AdapterSpec(old_rows, model.vocab.size, config.lora.rank, config.lora.alpha, list(config.lora.targets))
        try:
            new_adapter = GatedAdapters(model.core, spec)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"lora.targets: {err}") from err
        model = AnyGen(model.core, model.vocab, model.text_tokenizer, model.tokenizers, model.decoders,
                       [*model.adapters, new_adapter])
    model.requires_grad_(config.mode == "full")
    if config.mode != "full":
        for weight in _embedding_weights(model):
            _train_new_rows_only(weight, old_rows)
    if config.mode == "lora":
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    if new_adapter is not None:
        new_adapter.requires_grad_(True)
    return model.train()


def _with_lora(core: nn.Module, lora: LoraSection) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    settings = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.targets), bias="none")
    try:
        return get_peft_model(core, settings)
    except ValueError as err:
        raise InvalidArgumentError(f"lora.targets={lora.targets}: {err}") from err


def _embedding_weights(model: AnyGen) -> list[nn.Parameter]:
    """The input embedding and, when untied, the output matrix (a tied pair is one parameter)."""
    weights = [model.core.get_input_embeddings().weight]
    head = model.core.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:
        weights.append(head.weight)
    return weights


def _train_new_rows_only(weight: nn.Parameter, first_new: int) -> None:
    """Train ``weight`` with the gradient of rows ``< first_new`` zeroed (with no weight decay, see
    :func:`_trainable_groups`, Adam then leaves those rows bit-identical)."""
    weight.requires_grad_(True)

    def keep_new_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new] = 0
        return grad

    weight.register_hook(keep_new_rows)


def _trainable_groups(model: AnyGen, config: ExtendConfig) -> list[dict[str, Any]]:
    """Optimizer groups: masked embedding matrices without weight decay (decay would move the old rows)."""
    if config.mode == "full":
        return param_groups(model, config.optim.weight_decay)
    masked = {id(w) for w in _embedding_weights(model)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in masked]
    groups = [{"params": [p for p in model.parameters() if id(p) in masked], "weight_decay": 0.0}]
    if rest:
        groups.append({"params": rest, "weight_decay": config.optim.weight_decay})
    return groups


def export_model(model: nn.Module) -> AnyGen:
    """The trained model as an AnyGen: LoRA adapters merged into the core's weights, gated adapters kept beside it."""
    core = model.core
    if hasattr(core, "merge_and_unload"):
        core = core.merge_and_unload()
    return AnyGen(core, model.vocab, model.text_tokenizer, model.tokenizers, model.decoders, list(model.adapters))


# ---- 2. the corpus ------------------------------------------------------------------------------------------
def _model_and_corpus(config: ExtendConfig, tokenizer: ModalityTokenizer, builder: CorpusBuilder, root: Path,
                      show_progress: bool) -> tuple[AnyGen, TokenizedCorpus]:
    fingerprint = _fingerprint(config)
    model = build_model(config, tokenizer)
    saved = latest_checkpoint(root)
    if saved is not None:
        state = load_checkpoint(saved)
        if state["fingerprint"] != fingerprint:
            raise InvalidArgumentError(f"{root} holds data prepared for another model / modality / data config; "
                                       f"use a new train.out_dir or delete {root}")
        corpus = TokenizedCorpus.from_state(state["corpus"])
    else:
        _check_replay(config.data.replay, model)
        items = builder(dict(config.data.sizes), "train", config.data.seed)
        if config.data.replay_fraction > 0:
            items += build_split(config.data.replay, "train")
        corpus = tokenize_corpus(items, model.processor, progress=show_progress)
        save_checkpoint(root, 0, {"fingerprint": fingerprint, "corpus": corpus.to_state()}, keep_last=1)
    return model, corpus


def _check_replay(replay: DataConfig, model: AnyGen) -> None:
    for task, n in replay.sizes.items():
        missing = sorted(set(TASK_MODALITIES[task]) - set(model.vocab.modality_names))
        if n > 0 and missing:
            raise InvalidArgumentError(f"data.replay.sizes.{task}={n} but the model has no {missing[0]} modality")


def _fingerprint(config: ExtendConfig) -> str:
    """What the tokenized corpus depends on: the base model's files, the tokenizer and the data settings."""
    files = {"model": directory_digest(Path(config.model), "model")}
    if config.modality.path is not None:
        files["modality.path"] = directory_digest(Path(config.modality.path), "modality.path")
    data = {"modality": asdict(config.modality), "seed": config.data.seed, "sizes": config.data.sizes,
            "replay": to_dict(config.data.replay) if config.data.replay_fraction > 0 else None, "files": files}
    return json.dumps(data, sort_keys=True)
