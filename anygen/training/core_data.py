"""Data of the core recipe: items tokenized into id lists, and rows drawn as pure functions of the step.

:func:`tokenize_corpus` turns items into id lists (a fixed corpus once; the stream of
:mod:`anygen.training.stream` every step): each item's prompt, its target and, for the tasks that are sampled with
classifier-free guidance, the prompt with the condition dropped (exactly
``processor.encode(drop_condition(prompt, ...))``, the prompts ``anygen.generation.sampling.Guidance`` receives at
inference). :func:`draw_rows` then picks rows from ``(seed, step, process)`` alone, so a resumed run sees the
batches an uninterrupted run would have.

Example:
    >>> corpus = tokenize_corpus(items, model.processor)                          # doctest: +SKIP
    >>> rows = draw_rows(corpus, {"text_to_image": 1.0}, 0.1, 4, RowKey(0, 0))    # doctest: +SKIP
    >>> batch = collate(rows, model.vocab)                                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from anygen.errors import InvalidArgumentError
from anygen.processor import IGNORE, Batch, Processor, pad_rows
from anygen.types import CodesSegment, ImageSegment
from anygen.vocab import Vocab

# Modalities each task's items contain (a tokenizer is needed for every one of them).
TASK_MODALITIES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("image",), "image_to_text": ("image",), "edit": ("image",),
    "text_to_speech": ("audio",), "speech_to_text": ("audio",), "text_to_melody": ("audio",),
    "melody_to_text": ("audio",), "interleaved": ("image", "audio"), "text": (), "chat_edit": ("image",)}
# Condition dropout: which prompt modalities are dropped (as the pipelines' guidance drops them at inference).
DROP: dict[str, tuple[str, ...]] = {"text_to_image": ("text",), "text_to_speech": ("text",),
                                    "text_to_melody": ("text",), "edit": ("text",)}
# Editing also learns the fully unconditional prompt (image and instruction dropped), half as often.
DROP_ALL: dict[str, tuple[str, ...]] = {"edit": ("text", "image")}
VARIANTS = ("prompt", "target", "uncond", "uncond_all")


class RowKey(NamedTuple):
    """Which rows to draw: those of optimizer step ``step`` on process ``process`` (and the run's seed)."""

    step: int
    process: int = 0


@dataclass
class TokenizedCorpus:
    """Id lists per item (global ids, no bos/eos); ``uncond`` / ``uncond_all`` are ``None`` where not used."""

    tasks: list[str]
    prompt: list[list[int]]
    target: list[list[int]]
    uncond: list[list[int] | None]
    uncond_all: list[list[int] | None]

    def __len__(self) -> int:
        return len(self.tasks)

    def indices(self, task: str) -> list[int]:
        """Positions of ``task``'s items."""
        return [i for i, t in enumerate(self.tasks) if t == task]

    def longest(self) -> tuple[int, str]:
        """Length of the longest ``<bos> prompt target <eos>`` row and its task."""
        lengths = [len(p) + len(t) + 2 for p, t in zip(self.prompt, self.target)]
        i = int(np.argmax(lengths))
        return lengths[i], self.tasks[i]

    def to_state(self) -> dict[str, Any]:
        """Plain tensors + lists, storable by :func:`anygen.training.checkpoint.save_checkpoint`."""
        state: dict[str, Any] = {"tasks": list(self.tasks)}
        for name in VARIANTS:
            column = getattr(self, name)
            lengths = [-1 if ids is None else len(ids) for ids in column]
            flat = [i for ids in column if ids is not None for i in ids]
            state[name] = {"ids": torch.tensor(flat, dtype=torch.int32), "lengths": torch.tensor(lengths)}
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TokenizedCorpus:
        """Inverse of :meth:`to_state`."""
        columns = {name: _split(state[name]["ids"].tolist(), state[name]["lengths"].tolist()) for name in VARIANTS}
        return cls(tasks=list(state["tasks"]), **columns)


def _split(flat: list[int], lengths: list[int]) -> list[list[int] | None]:
    out: list[list[int] | None] = []
    start = 0
    for n in lengths:
        out.append(None if n < 0 else flat[start:start + n])
        start += max(n, 0)
    return out


def tokenize_corpus(items: Sequence[Mapping[str, Any]], processor: Processor, *, progress: bool = False,
                    image_batch: int = 64) -> TokenizedCorpus:
    """Encode every item once. Images are encoded in batches of ``image_batch``; each media segment is encoded a
    single time and shared by all prompt variants."""
    coded = _encode_images(items, processor, image_batch, progress)
    corpus = TokenizedCorpus([], [], [], [], [])
    for item in tqdm(items, desc="tokenize corpus", disable=not progress):
        task = item["task"]
        prompt, target = ([coded.get(id(s), s) for s in item[k]] for k in ("prompt", "target"))
        pieces = [(segment.modality, processor.segment_ids(segment)) for segment in prompt]
        corpus.tasks.append(task)
        corpus.prompt.append(_join(pieces, ()))
        corpus.target.append(processor.encode(target))
        corpus.uncond.append(_join(pieces, DROP[task]) if task in DROP else None)
        corpus.uncond_all.append(_join(pieces, DROP_ALL[task]) if task in DROP_ALL else None)
    return corpus


def _encode_images(items: Sequence[Mapping[str, Any]], processor: Processor, batch: int,
                   progress: bool) -> dict[int, CodesSegment]:
    """``id(segment) -> CodesSegment`` for every image, encoded in batches of images of one size (audio clips
    differ in length and a batch would pad them, so they are encoded one by one)."""
    if "image" not in processor.tokenizers:
        return {}
    groups: dict[tuple[int, ...], list[ImageSegment]] = {}
    for segment in (s for item in items for s in (*item["prompt"], *item["target"])):
        if isinstance(segment, ImageSegment):
            image = segment.image
            groups.setdefault(tuple(image.size if isinstance(image, Image.Image) else image.shape), []).append(segment)
    chunks = [group[i:i + batch] for group in groups.values() for i in range(0, len(group), batch)]
    coded = {}
    for chunk in tqdm(chunks, desc="encode images", disable=not progress):
        codes = processor.tokenizers["image"].encode([s.image for s in chunk])  # (B, N)
        coded.update({id(s): CodesSegment("image", c) for s, c in zip(chunk, codes)})
    return coded


def _join(pieces: Sequence[tuple[str, list[int]]], dropped: Sequence[str]) -> list[int]:
    return [i for modality, ids in pieces if modality not in dropped for i in ids]


def draw_rows(corpus: TokenizedCorpus, task_weights: Mapping[str, float], cond_dropout: float, rows: int,
              key: RowKey, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``rows`` (prompt ids, target ids) pairs: task by weight, item uniformly, then condition dropout.

    With probability ``cond_dropout`` a guided task's prompt is replaced by its unconditional variant; editing
    additionally drops image and instruction together with probability ``cond_dropout / 2``.
    """
    rng = np.random.default_rng([seed, key.step, key.process])
    tasks = sorted(t for t, w in task_weights.items() if w > 0)
    probs = np.array([task_weights[t] for t in tasks], dtype=np.float64)
    pools = {t: _pool(corpus, t) for t in tasks}
    out = []
    for task_index in rng.choice(len(tasks), size=rows, p=probs / probs.sum()):
        pool = pools[tasks[task_index]]
        i = pool[int(rng.integers(len(pool)))]
        u = float(rng.random())  # always drawn, so the stream never depends on the task
        out.append((choose_prompt(corpus, i, u, cond_dropout), corpus.target[i]))
    return out


def choose_prompt(corpus: TokenizedCorpus, i: int, u: float, cond_dropout: float) -> list[int]:
    """Item ``i``'s prompt after condition dropout decided by the uniform draw ``u``: the unconditional variant when
    ``u < cond_dropout``, the fully unconditional one (editing) when ``u < 1.5 * cond_dropout``."""
    if corpus.uncond[i] is not None and u < cond_dropout:
        return corpus.uncond[i]
    if corpus.uncond_all[i] is not None and u < 1.5 * cond_dropout:
        return corpus.uncond_all[i]
    return corpus.prompt[i]


def _pool(corpus: TokenizedCorpus, task: str) -> list[int]:
    pool = corpus.indices(task)
    if not pool:
        raise InvalidArgumentError(f"data.task_weights.{task} > 0 but the corpus has no {task} items")
    return pool


def split_by_length(rows: Sequence[tuple[list[int], list[int]]], parts: int) -> list[list[tuple[list[int], list[int]]]]:
    """``parts`` equal micro-batches of rows of similar length (less padding than a random split)."""
    if len(rows) % parts:
        raise InvalidArgumentError(f"{len(rows)} rows cannot be split into {parts} equal micro-batches")
    ordered = sorted(rows, key=lambda row: len(row[0]) + len(row[1]))
    size = len(rows) // parts
    return [ordered[i * size:(i + 1) * size] for i in range(parts)]


def target_tokens(batch: Batch) -> int:
    """Tokens a batch's loss is averaged over (labels are shifted by one inside the model)."""
    return int((batch.labels[:, 1:] != IGNORE).sum())


def collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], vocab: Vocab) -> Batch:
    """Right-padded ``<bos> prompt target <eos>`` rows; labels are ``-100`` on bos, prompt and padding."""
    ids = [[vocab.bos_id, *prompt, *target, vocab.eos_id] for prompt, target in rows]
    labels = [[IGNORE] * (1 + len(prompt)) + [*target, vocab.eos_id] for prompt, target in rows]
    input_ids, attention_mask = pad_rows(ids, vocab.pad_id)
    return Batch(input_ids, attention_mask, vocab.modality_of(input_ids), pad_rows(labels, IGNORE)[0])
