"""Recipe: train the core of an any-to-any model on the mixed synthetic corpus (``anygen train``).

Run ``anygen train --config configs/train/tiny.yaml [--set key=value ...]`` (or ``python -m
anygen.training.core_cli``), or call :func:`main`. ``accelerate launch`` runs the same recipe on several processes.

The tasks (text->image, image->text, editing, text->speech, speech->text, text->melody, melody->text,
interleaved, text-only) come from the generators. With ``data.source: stream`` (the default) every step draws
fresh items, rendered and tokenized in a background thread (:mod:`anygen.training.stream`); with ``corpus`` a
fixed draw is built and tokenized once. Either way the main process trains the text BPE on a draw of the
corpus' texts and commits it (and the tokenized corpus) under ``<out_dir>/data``; every later start reads it
back. Each step's rows are a pure function of ``(seed, step, process)``, and checkpoints under
``<out_dir>/checkpoints`` hold the model, the optimizer and the RNG, so a run that is stopped (``train.max_minutes``,
a crash, SIGKILL) and started again with the same command ends with the weights an uninterrupted run would have.
Metrics go to ``<out_dir>/metrics.jsonl`` and to the accelerate trackers ``train.log_with`` names (TensorBoard, W&B,
MLflow ...; :mod:`anygen.training.core_metrics`); the trained model to ``<out_dir>/final``.

Example:
    >>> from anygen.config import load_config
    >>> config = load_config(CoreTrainConfig, "configs/train/smoke.yaml", ["train.out_dir=/tmp/core"])
    >>> result = main(config)  # doctest: +SKIP
    >>> AnyGen.from_pretrained(result.final_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from accelerate import Accelerator
from tokenizers import Tokenizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from anygen.config import to_dict
from anygen.core import CoreConfig
from anygen.data.corpus import TASKS, DataConfig, build_split
from anygen.evaluation.suites import SUITES
from anygen.errors import CheckpointError, InvalidArgumentError, check_range
from anygen.model import AnyGen
from anygen.processor import Batch
from anygen.tokenizers.text import TextTokenizer
from anygen.training import sources
from anygen.training.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from anygen.training.core_data import (
    TASK_MODALITIES,
    TokenizedCorpus,
    collate,
    split_by_length,
    target_tokens,
    tokenize_corpus,
)
from anygen.training.core_metrics import LossWindow, MetricsLogger, check_log_with, tracking
from anygen.training.distributed import (
    SHARDED,
    Prepared,
    full_model,
    gather_state,
    make_accelerator,
    prepare,
    restore_state,
    strategy_of,
)
from anygen.training.schedule import check_scheduler, lr_scheduler
from anygen.training.stream import CorpusRows, Prefetcher, RowSource, StreamRows

# kind -> (modality, class in anygen.tokenizers, needs a trained ``path``)
TOKENIZER_KINDS: dict[str, tuple[str, str, bool]] = {
    "image_vq": ("image", "ImageVQ", True), "audio_codec": ("audio", "AudioCodec", True),
    "grid": ("image", "GridImageTokenizer", False), "mulaw": ("audio", "MuLawAudioTokenizer", False)}


@dataclass
class TokenizerSpec:
    """A modality tokenizer: trained (``image_vq`` / ``audio_codec`` loaded from ``path``) or weight-free
    (``grid`` / ``mulaw``, built from ``options``, e.g. ``{cell: 8}``) so that tests need no weights."""

    kind: Literal["image_vq", "audio_codec", "grid", "mulaw"] = "grid"
    path: str | None = None
    options: dict[str, int | float] = field(default_factory=dict)

    def check(self, key: str, modality: str) -> None:
        want, _, trained = TOKENIZER_KINDS[self.kind]
        if want != modality:
            raise InvalidArgumentError(f"{key}.kind={self.kind!r} tokenizes {want}, not {modality}")
        if trained and (self.path is None or self.options):
            raise InvalidArgumentError(f"{key}.kind={self.kind!r} needs a path (of its save_pretrained directory) "
                                       "and no options")
        if not trained and self.path is not None:
            raise InvalidArgumentError(f"{key}.path must be empty for the weight-free kind {self.kind!r}")
        if not trained:
            self.build(key)  # cheap without weights: bad options fail now, not after the corpus is built

    def build(self, key: str) -> Any:
        _, name, trained = TOKENIZER_KINDS[self.kind]
        cls = getattr(importlib.import_module("anygen.tokenizers"), name)
        if trained:
            return cls.from_pretrained(self.path)
        try:
            return cls(**self.options)
        except (TypeError, InvalidArgumentError) as err:
            raise InvalidArgumentError(f"{key}.options={self.options}: {err}") from err


# items both the old and the new tokenizer of a modality encode to align their codes: (count, image side, seed)
ALIGN_SOURCES: dict[str, Any] = {
    "image": lambda n, side, seed: sources.image_batch({"scenes": 1.0}, n, (side, side), seed, 0),
    "audio": lambda n, side, seed: sources.audio_batch({"speech": 1.0, "melodies": 1.0}, n, 2 * sources.SAMPLE_RATE,
                                                       seed, 0)}


def _default_tokenizers() -> dict[str, TokenizerSpec]:
    return {"image": TokenizerSpec("grid", options={"cell": 8}),
            "audio": TokenizerSpec("mulaw", options={"sample_rate": 16000})}


@dataclass
class ModelSection:
    """The model: modality tokenizers, a BPE of ``text_vocab_size`` trained on the corpus' texts, and the core.
    With ``init_from`` (a saved AnyGen directory) training continues from it and the rest of this section is unused,
    except ``replace_tokenizers``: modality tokenizers that replace the saved model's (e.g. a retrained audio codec;
    same codebook layout, see :meth:`AnyGen.replace_tokenizer`), and ``align_items``: how many generated items
    (scenes for ``image``; speech and melody clips of 2 s for ``audio``) both tokenizers encode so each new code
    starts from the rows of the old codes on the same frames (0: the new codes keep the old codes' rows)."""

    tokenizers: dict[str, TokenizerSpec] = field(default_factory=_default_tokenizers)
    text_vocab_size: int = 2048
    core: CoreConfig = field(default_factory=CoreConfig)
    init_from: str | None = None
    attn_implementation: Literal["sdpa", "eager", "xformers"] = "sdpa"
    replace_tokenizers: dict[str, TokenizerSpec] = field(default_factory=dict)
    align_items: int = 2048

    def __post_init__(self) -> None:
        check_range("model.text_vocab_size", self.text_vocab_size, 257, 1_000_000)
        check_range("model.align_items", self.align_items, 0, 100_000)
        unaligned = sorted(set(self.replace_tokenizers) - set(ALIGN_SOURCES)) if self.align_items else []
        if unaligned:
            raise InvalidArgumentError(f"model.align_items={self.align_items}: no generated items to align "
                                       f"{unaligned} with (only {sorted(ALIGN_SOURCES)}); set it to 0")
        for name, spec in self.tokenizers.items():
            spec.check(f"model.tokenizers.{name}", name)
        if self.replace_tokenizers and self.init_from is None:
            raise InvalidArgumentError("model.replace_tokenizers replaces tokenizers of a saved model and needs "
                                       "model.init_from")
        for name, spec in self.replace_tokenizers.items():
            spec.check(f"model.replace_tokenizers.{name}", name)


@dataclass
class DataSection:
    """Where rows come from.

    ``source``: ``stream`` draws fresh items from the generators every step; ``corpus`` draws rows from one fixed
    draw of ``corpus`` built at the start. Both train the text BPE on ``corpus``' texts. ``corpus``: the draw to
    build (sizes per task); ``task_weights``: sampling weight per task (empty: proportional to the corpus sizes;
    listed: unlisted tasks get 0); ``cond_dropout``: probability of dropping a guided task's condition;
    ``prefetch``: steps of rows computed ahead; ``workers``: processes that compute them (0: one background
    thread; on a GPU, one per spare CPU core, since one core renders and tokenizes ~9k tokens/s).
    """

    corpus: DataConfig = field(default_factory=DataConfig)
    task_weights: dict[str, float] = field(default_factory=dict)
    cond_dropout: float = 0.1
    source: Literal["stream", "corpus"] = "stream"
    prefetch: int = 4
    workers: int = 0

    def __post_init__(self) -> None:
        check_range("data.cond_dropout", self.cond_dropout, 0.0, 2 / 3)  # editing drops both with 1.5 x this
        check_range("data.prefetch", self.prefetch, 1, 1024)
        check_range("data.workers", self.workers, 0, 256)
        for task, weight in self.task_weights.items():
            if task not in TASKS:
                raise InvalidArgumentError(f"data.task_weights has unknown task {task!r}; valid: {list(TASKS)}")
            check_range(f"data.task_weights.{task}", weight, 0.0, None)
            if weight > 0 and self.source == "corpus" and self.corpus.sizes.get(task, 0) == 0:
                raise InvalidArgumentError(f"data.task_weights.{task}={weight} but data.corpus.sizes.{task} is 0")
        if sum(self.weights().values()) <= 0:
            raise InvalidArgumentError("data.task_weights (or data.corpus.sizes) must give some task a weight > 0")

    def weights(self) -> dict[str, float]:
        """The sampling weight of every task."""
        if self.task_weights:
            return {t: float(self.task_weights.get(t, 0.0)) for t in TASKS}
        return {t: float(self.corpus.sizes.get(t, 0)) for t in TASKS}


@dataclass
class OptimSection:
    """AdamW over ``steps`` optimizer steps, its rate set by transformers' scheduler ``lr_scheduler`` (default: linear
    warm-up over ``warmup_steps``, then cosine decay from ``lr`` to ``min_lr``; any step schedule of transformers'
    ``SchedulerType``, with ``lr_scheduler_kwargs`` its extra arguments; :mod:`anygen.training.schedule`).
    Each step takes ``grad_accum`` micro-batches of ``batch_size`` rows per process; ``grad_clip=0`` is off."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr: float = 3e-5
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    grad_clip: float = 1.0
    lr_scheduler: str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, 0.0, 1.0, low_inclusive=False)
        check_range("optim.min_lr", self.min_lr, 0.0, self.lr)
        if len(self.betas) != 2:
            raise InvalidArgumentError(f"optim.betas={list(self.betas)} must hold two values")
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, 0.0, 1.0, high_inclusive=False)
        check_range("optim.weight_decay", self.weight_decay, 0.0, None)
        check_range("optim.grad_clip", self.grad_clip, 0.0, None)
        check_range("optim.warmup_steps", self.warmup_steps, 0, None)
        for key in ("steps", "batch_size", "grad_accum"):
            check_range(f"optim.{key}", getattr(self, key), 1, None)
        check_scheduler("optim.lr_scheduler", self.lr_scheduler, self.lr_scheduler_kwargs)


@dataclass
class TrainSection:
    """Bookkeeping. ``loss_weights`` scale each modality's target tokens; ``max_minutes`` (0: none) ends the run
    with a checkpoint once spent, and the same command continues it; ``threads=0`` keeps torch's default.
    ``eval_every`` (0: never) runs ``eval_suites`` (``anygen eval`` suites, ``eval_n`` items per category) on the
    validation split every that many steps and logs the scores, so the learning curve is on record.
    ``activation_checkpointing`` recomputes each decoder layer's activations in the backward pass (less memory, about
    a third more compute). ``log_with``: ``jsonl`` and/or any tracker accelerate supports
    (:mod:`anygen.training.core_metrics`). How the model is spread over processes comes from
    ``accelerate launch --config_file`` (docs/training_at_scale.md)."""

    out_dir: str = "runs/core"
    seed: int = 0
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    loss_weights: dict[str, float] = field(default_factory=dict)
    max_minutes: float = 0.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    threads: int = 0
    log_with: list[str] = field(default_factory=lambda: ["jsonl"])
    eval_every: int = 0
    eval_suites: list[str] = field(default_factory=lambda: ["shapes", "caption", "edit"])
    eval_n: int = 4
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for key in ("checkpoint_every", "keep_last", "log_every", "eval_n"):
            check_range(f"train.{key}", getattr(self, key), 1, None)
        check_range("train.eval_every", self.eval_every, 0, None)
        check_log_with("train.log_with", self.log_with)
        unknown = sorted(set(self.eval_suites) - set(SUITES))
        if unknown:
            raise InvalidArgumentError(f"train.eval_suites has unknown suite(s) {unknown}; valid: {list(SUITES)}")
        check_range("train.max_minutes", self.max_minutes, 0.0, None)
        check_range("train.threads", self.threads, 0, 1024)
        for name, weight in self.loss_weights.items():
            check_range(f"train.loss_weights.{name}", weight, 0.0, None)


@dataclass
class CoreTrainConfig:
    """Everything :func:`main` needs (YAML files in ``configs/train/``).

    Example:
        >>> config = load_config(CoreTrainConfig, "configs/train/smoke.yaml", ["optim.steps=4"])  # doctest: +SKIP
        >>> config.optim.batch_size * config.optim.grad_accum  # doctest: +SKIP
        8
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        if self.model.init_from is not None:
            return  # the modalities come from the saved model; checked once it is loaded
        modalities = ("text", *self.model.tokenizers)
        check_names(self.train.loss_weights, modalities, "train.loss_weights")
        for task, n in self.data.corpus.sizes.items():
            missing = sorted(set(TASK_MODALITIES[task]) - set(modalities))
            if n > 0 and missing:
                raise InvalidArgumentError(f"data.corpus.sizes.{task}={n} needs model.tokenizers.{missing[0]}")


@dataclass
class CoreTrainResult:
    """Where a run ended: ``complete`` once ``optim.steps`` were done (then ``final_dir`` holds the model);
    otherwise it stopped at ``max_minutes`` with a checkpoint, and the same command continues."""

    step: int
    complete: bool
    loss: float | None
    tokens_per_second: float | None
    final_dir: str | None


def main(config: CoreTrainConfig) -> CoreTrainResult:
    """Train (or resume) the core described by ``config``."""
    began = time.monotonic()
    # 1. Devices and processes (CPU when no GPU), threads, mixed precision, gradient accumulation.
    accelerator, logger = start_run(config.optim, config.train, to_dict(config))
    # 2. The model and its rows (the stream, or a tokenized corpus): the text BPE (and the corpus) are built and
    #    committed by the main process and read back by the others.
    with accelerator.main_process_first():
        model, source = model_and_rows(config, Path(config.train.out_dir) / "data", accelerator.is_main_process)
    optimizer = torch.optim.AdamW(param_groups(model, config.optim.weight_decay), lr=config.optim.lr,
                                  betas=tuple(config.optim.betas))
    # 3-5. Resume, the loop, the final model.
    return train_loop(accelerator, model, optimizer, source, logger, optim=config.optim, train=config.train,
                      began=began, prefetch=config.data.prefetch, workers=config.data.workers)


def start_run(optim: OptimSection, train: TrainSection,
              config: dict[str, Any] | None = None) -> tuple[Accelerator, MetricsLogger]:
    """Step 1 of a recipe: threads, the accelerator (CPU when no GPU; DDP, FSDP2 or DeepSpeed as launched; the
    trackers of ``train.log_with``) and the metrics logger of ``train.out_dir``, which gives ``config`` (the whole
    run's, as a dict) to the trackers."""
    if train.threads:
        torch.set_num_threads(train.threads)
    out = Path(train.out_dir)
    accelerator = make_accelerator(train.mixed_precision, optim.grad_accum, **tracking(train.log_with, out))
    strategy = strategy_of(accelerator)
    if train.eval_every and strategy in SHARDED:
        raise InvalidArgumentError(f"train.eval_every={train.eval_every}: validation runs on one process and needs "
                                   f"the whole model, not a {strategy} shard; set it to 0")
    return accelerator, MetricsLogger(accelerator, out, train.log_with, config)


def train_loop(accelerator: Accelerator, model: AnyGen, optimizer: torch.optim.Optimizer, source: RowSource,
               logger: MetricsLogger, *, optim: OptimSection, train: TrainSection, began: float,
               desc: str = "train core", export: Callable[[torch.nn.Module], AnyGen] | None = None,
               prefetch: int = 4, workers: int = 0) -> CoreTrainResult:
    """Steps 3-5, shared by every recipe that trains an AnyGen on rows of a :class:`RowSource`.

    Resumes from ``<train.out_dir>/checkpoints``, runs ``optim.steps`` steps of ``source``'s rows (computed up to
    ``prefetch`` steps ahead in a background thread, or in ``workers`` processes), commits checkpoints, and saves
    ``export(model)`` (default: the model itself) to ``<train.out_dir>/final`` once every step is done.
    """
    out = Path(train.out_dir)
    # 3. Wrap for the processes (DDP, FSDP2 or DeepSpeed, as launched), then resume from the last committed
    #    checkpoint: model, optimizer, RNG (the data follow from the step).
    run = prepare(accelerator, model, optimizer, micro_batch=optim.batch_size, grad_clip=optim.grad_clip,
                  activation_checkpointing=train.activation_checkpointing)
    model, optimizer = run.model, run.optimizer
    state, start = _resume(out / "checkpoints", run)
    if state is not None and accelerator.scaler is not None and "scaler" in state:
        accelerator.scaler.load_state_dict(state["scaler"])
    # 4. The loop: per step, grad_accum micro-batches -> one optimizer step at the scheduler's rate; logs and
    #    checkpoints on schedule.
    scheduler = lr_schedule(optimizer, optim, start)
    logger.drop_after(start)
    window = LossWindow()
    vocab, total = accelerator.unwrap_model(model).vocab, optim.steps
    bar = tqdm(range(start, total), initial=start, total=total, disable=not accelerator.is_main_process, desc=desc)
    done, record = start, {}
    with Prefetcher(source.rows, start, total, accelerator.process_index, prefetch, workers) as upcoming:
        for step in bar:
            lr = scheduler.get_last_lr()[0]
            # The step's rows (a function of seed, step, process), sorted by length into grad_accum micro-batches.
            waited = time.monotonic()
            rows = upcoming.get(step)
            window.wait(time.monotonic() - waited)
            batches = [collate(part, vocab) for part in split_by_length(rows, optim.grad_accum)]
            _train_step(accelerator, model, optimizer, batches, optim, train, window)
            scheduler.step()
            done = step + 1
            if done % train.log_every == 0 or done == total:
                record = {"step": done, "lr": lr, **window.flush(accelerator), "cpu_s": time.process_time()}
                logger.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if train.eval_every and (done % train.eval_every == 0 or done == total) and accelerator.is_main_process:
                logger.write({"step": done, "eval": validation_scores(accelerator.unwrap_model(model), train)})
            out_of_time = _out_of_time(accelerator, began, train.max_minutes)
            if done % train.checkpoint_every == 0 or done == total or out_of_time:
                _commit(accelerator, out / "checkpoints", done, run, train.keep_last)
            if out_of_time:
                break
    logger.close()
    # 5. The trained model, in the format users load with AnyGen.from_pretrained.
    final_dir = _save_final(accelerator, run, out / "final", export) if done == total else None
    return CoreTrainResult(step=done, complete=done == total, loss=record.get("loss"),
                           tokens_per_second=record.get("tokens_per_s"), final_dir=final_dir)


# ---- 2. model and corpus ---------------------------------------------------------------------------------------
def build_model(config: CoreTrainConfig, text: TextTokenizer | None, align: bool = True) -> AnyGen:
    """The model to train: ``model.init_from`` loaded, or a new one (seeded) from the model section. ``align=False``
    skips aligning replaced tokenizers' rows (a resumed run loads its own weights over them)."""
    section = config.model
    if section.init_from is not None:
        model = AnyGen.from_pretrained(section.init_from, section.attn_implementation)
        for name, spec in section.replace_tokenizers.items():
            key = f"model.replace_tokenizers.{name}"
            tokenizer = spec.build(key)
            items = (ALIGN_SOURCES[name](section.align_items, config.data.corpus.image_size, config.train.seed)
                     if section.align_items and align else None)
            try:
                model.replace_tokenizer(name, tokenizer, align_with=items)
            except (CheckpointError, InvalidArgumentError) as err:
                raise InvalidArgumentError(f"{key}: {err}") from err
    else:
        tokenizers = {name: spec.build(f"model.tokenizers.{name}") for name, spec in section.tokenizers.items()}
        torch.manual_seed(config.train.seed)
        model = AnyGen.create(text, tokenizers, section.core, attn_implementation=section.attn_implementation)
    check_names(config.train.loss_weights, model.vocab.modality_names, "train.loss_weights")
    return model.train()


def model_and_rows(config: CoreTrainConfig, root: Path, show_progress: bool) -> tuple[AnyGen, RowSource]:
    """The model to train and the source of its rows. What must not change between starts (the text BPE, a fixed
    corpus' ids) is committed under ``root`` on the first start and read back on later ones."""
    data = config.data
    fingerprint = _fingerprint(config)
    saved = latest_checkpoint(root)
    if saved is not None:
        state = load_checkpoint(saved)
        if _without_paths(state["fingerprint"]) != fingerprint:
            raise InvalidArgumentError(f"{root} holds data prepared for another data / model config; use a "
                                       f"new train.out_dir or delete {root}")
        model = build_model(config, TextTokenizer(Tokenizer.from_str(state["text_tokenizer"])), align=False)
        corpus = TokenizedCorpus.from_state(state["corpus"]) if "corpus" in state else None
    else:
        fresh_bpe = config.model.init_from is None
        items = build_split(data.corpus, "train") if fresh_bpe or data.source == "corpus" else []
        text = None
        if fresh_bpe:
            texts = [s.text for item in items for s in (*item["prompt"], *item["target"]) if s.modality == "text"]
            text = TextTokenizer.train(texts, config.model.text_vocab_size)
        model = build_model(config, text)
        state = {"fingerprint": fingerprint, "text_tokenizer": model.text_tokenizer.backend.to_str()}
        corpus = None
        if data.source == "corpus":
            corpus = tokenize_corpus(items, model.processor, progress=show_progress)
            state["corpus"] = corpus.to_state()
        save_checkpoint(root, 0, state, keep_last=1)
    rows = config.optim.batch_size * config.optim.grad_accum
    context = model.core.config.max_position_embeddings
    if corpus is not None:
        return model, CorpusRows(corpus, data.weights(), data.cond_dropout, rows, config.train.seed, context)
    return model, StreamRows(data.corpus, model.processor, data.weights(), data.cond_dropout, rows,
                             config.train.seed, context)


def _fingerprint(config: CoreTrainConfig) -> str:
    """What the committed data depend on (sampling weights and the core's shape are not part of it)."""
    section = config.model
    paths = {f"model.tokenizers.{name}.path": spec.path for name, spec in section.tokenizers.items()}
    paths["model.init_from"] = section.init_from
    paths |= {f"model.replace_tokenizers.{name}.path": spec.path for name, spec in section.replace_tokenizers.items()}
    data = {"source": config.data.source, "corpus": to_dict(config.data.corpus),
            "text_vocab_size": section.text_vocab_size,
            "tokenizers": {k: asdict(v) for k, v in section.tokenizers.items()},
            "files": {key: directory_digest(Path(path), key) for key, path in paths.items() if path is not None}}
    if section.replace_tokenizers:  # absent otherwise, so runs saved before the option existed still resume
        data["replace_tokenizers"] = {k: asdict(v) for k, v in section.replace_tokenizers.items()}
    return _without_paths(json.dumps(data, sort_keys=True))


def _without_paths(fingerprint: str) -> str:
    """A fingerprint without the tokenizers' paths: their files' digests stand for them, so a run resumes after the
    repository (or the package) moved. Also applied to fingerprints saved with paths."""
    data = json.loads(fingerprint)
    for spec in [*data["tokenizers"].values(), *data.get("replace_tokenizers", {}).values()]:
        spec.pop("path", None)
    return json.dumps(data, sort_keys=True)


def directory_digest(path: Path, key: str) -> str:
    """SHA-256 of every file under ``path`` (names and bytes); ``key`` names the setting in the error."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        raise CheckpointError(f"{key}={str(path)!r} is not a directory written by save_pretrained")
    sha = hashlib.sha256()
    for file in files:
        sha.update(str(file.relative_to(path)).encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def check_names(weights: dict[str, float], valid: Any, key: str) -> None:
    """Raise naming ``key`` when ``weights`` names a modality outside ``valid``."""
    unknown = sorted(set(weights) - set(valid))
    if unknown:
        raise InvalidArgumentError(f"{key} has unknown modality(ies) {unknown}; valid: {list(valid)}")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (embeddings included) only, not on norms or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


# ---- 3. resume / commit ----------------------------------------------------------------------------------------
def _resume(root: Path, run: Prepared) -> tuple[dict[str, Any] | None, int]:
    """Every process reads the last committed checkpoint and keeps its part of the full state (after ``prepare``)."""
    path = latest_checkpoint(root)
    if path is None:
        return None, 0
    state = load_checkpoint(path)
    try:
        restore_state(run, state["model"], state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} does not match this config's model: {err}") from err
    restore_rng_state(state["rng"])
    return state, checkpoint_step(path)


def _commit(accelerator: Accelerator, root: Path, step: int, run: Prepared, keep_last: int) -> None:
    """Every process helps gather the full state; only the main process writes, after all finished the step."""
    accelerator.wait_for_everyone()
    model_state, optimizer_state = gather_state(accelerator, run)
    if accelerator.is_main_process:
        state = {"model": model_state, "optimizer": optimizer_state, "rng": capture_rng_state(),
                 "distributed": {"strategy": run.strategy, "processes": accelerator.num_processes}}
        if accelerator.scaler is not None:
            state["scaler"] = accelerator.scaler.state_dict()
        save_checkpoint(root, step, state, keep_last=keep_last)
    accelerator.wait_for_everyone()


def _save_final(accelerator: Accelerator, run: Prepared, directory: Path,
                export: Callable[[torch.nn.Module], AnyGen] | None = None) -> str:
    """The whole model (gathered from the shards of a sharded run) saved by the main process."""
    accelerator.wait_for_everyone()
    trained = full_model(accelerator, run)
    if accelerator.is_main_process:
        (trained if export is None else export(trained)).save_pretrained(directory)
    accelerator.wait_for_everyone()
    return str(directory)


def validation_scores(model: AnyGen, train: TrainSection) -> dict[str, float]:
    """``train.eval_suites`` on the validation split (seed 0); the RNG state of training is left as it was."""
    from anygen.evaluation.cli import pipeline_callables
    from anygen.evaluation.suites import run_suite
    from anygen.pipelines import AnyGenPipeline

    rng = capture_rng_state()
    model.eval()
    try:
        with torch.no_grad():
            callables = pipeline_callables(AnyGenPipeline(model), seed=0)
            results = [r for suite in train.eval_suites
                       for r in run_suite(suite, train.eval_n, seed=0, split="validation", model=callables)]
    finally:
        model.train()
        restore_rng_state(rng)
    return {r.suite: r.overall for r in results}


# ---- 4. one step, schedule and time budget ---------------------------------------------------------------------------
def _train_step(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                batches: list[Batch], optim: OptimSection, train: TrainSection, window: LossWindow) -> None:
    """grad_accum micro-batches -> one optimizer step; the loss is the mean over all the step's target tokens."""
    step_tokens = max(sum(target_tokens(b) for b in batches), 1)
    for batch in batches:
        batch = batch.to(accelerator.device)
        with accelerator.accumulate(model):
            output = model(batch.input_ids, batch.attention_mask, batch.labels, loss_weights=train.loss_weights)
            share = len(batches) * target_tokens(batch) / step_tokens  # accelerate divides by grad_accum
            accelerator.backward(output.loss * share)
            if accelerator.sync_gradients and optim.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        window.add(output.loss * share, output.losses, int(batch.attention_mask.sum()))


def lr_schedule(optimizer: torch.optim.Optimizer, optim: OptimSection, start: int = 0) -> LRScheduler:
    """``optim.lr_scheduler`` over ``optim.steps`` steps, at step ``start``; ``step()`` it after each optimizer step."""
    return lr_scheduler(optimizer, optim.lr_scheduler, base_lr=optim.lr, warmup=optim.warmup_steps, total=optim.steps,
                        min_lr_rate=optim.min_lr / optim.lr, start=start, kwargs=optim.lr_scheduler_kwargs)


def _out_of_time(accelerator: Accelerator, began: float, max_minutes: float) -> bool:
    """Every process must agree, so the main process' clock decides."""
    if max_minutes <= 0:
        return False
    late = torch.tensor([float(time.monotonic() - began > 60 * max_minutes)], device=accelerator.device)
    return bool(accelerator.reduce(late, "sum").item() > 0)
