"""Where a core recipe's rows come from: an endless stream of fresh items, or a fixed tokenized corpus.

A :class:`RowSource` answers one question: the ``(prompt ids, target ids)`` rows of optimizer step ``step`` on
process ``process``. Both sources answer it as a pure function of ``(seed, step, process)``, so a resumed run sees
exactly the batches an uninterrupted run would, and no process ever draws another's rows.

- :class:`StreamRows` draws every row fresh from the generators (new scenes, edits, voices, melodies, documents:
  :func:`anygen.data.corpus.build_item`), renders and tokenizes them. A model never sees an item twice, so it
  cannot memorise a draw.
- :class:`CorpusRows` draws rows from a corpus tokenized once (:func:`~anygen.training.core_data.draw_rows`): the
  fixed corpus of earlier versions, and the shape for users' own data.

:class:`Prefetcher` computes the rows of the next steps in a background thread with a bounded queue, or in worker
processes (``data.workers``: one per spare core, for a GPU that trains faster than one core renders), so the
training loop does not wait for rendering and tokenizing (``benchmarks/stream.py`` measures both rates).

Example:
    >>> source = StreamRows(DataConfig(), model.processor, {"text_to_image": 1.0}, 0.1,  # doctest: +SKIP
    ...                     rows=32, seed=0)                                             # doctest: +SKIP
    >>> with Prefetcher(source.rows, start=0, stop=100, process=0) as rows:              # doctest: +SKIP
    ...     first = rows.get(0)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np
import torch.utils.data

from anygen.data.corpus import DataConfig, build_item
from anygen.errors import InvalidArgumentError
from anygen.processor import Processor
from anygen.training.core_data import RowKey, TokenizedCorpus, choose_prompt, draw_rows, tokenize_corpus

Rows = list[tuple[list[int], list[int]]]
_STREAM = 7  # a constant in every stream seed, so stream draws never coincide with the corpus' streams


class RowSource(Protocol):
    """Rows of one optimizer step on one process; a pure function of ``(seed, step, process)``."""

    def rows(self, key: RowKey) -> Rows: ...


class CorpusRows:
    """Rows drawn from a corpus tokenized once (task by weight, item uniformly, then condition dropout)."""

    def __init__(self, corpus: TokenizedCorpus, weights: Mapping[str, float], cond_dropout: float, rows: int,
                 seed: int, context: int) -> None:
        self.corpus, self.weights, self.cond_dropout = corpus, dict(weights), cond_dropout
        self.count, self.seed = rows, seed
        check_length(*corpus.longest(), context)

    def rows(self, key: RowKey) -> Rows:
        return draw_rows(self.corpus, self.weights, self.cond_dropout, self.count, key, self.seed)


class StreamRows:
    """Fresh rows every step: task by weight, a new item of it from the generators, then condition dropout.

    Row ``r`` of step ``s`` on process ``p`` is drawn with its own generator seeded ``(seed, s, p, r)``; the
    tasks and dropout coins of the step come from ``(seed, s, p)``. Items are tokenized together, so the step's
    images are encoded in one batch.
    """

    def __init__(self, data: DataConfig, processor: Processor, weights: Mapping[str, float], cond_dropout: float,
                 rows: int, seed: int, context: int, split: str = "train") -> None:
        self.tasks = sorted(t for t, w in weights.items() if w > 0)
        if not self.tasks:
            raise InvalidArgumentError("data.task_weights must give some task a weight > 0")
        probs = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = probs / probs.sum()
        self.data, self.processor, self.cond_dropout = data, processor, cond_dropout
        self.count, self.seed, self.context, self.split = rows, seed, context, split

    def items(self, key: RowKey) -> list[dict]:
        """The step's fresh items (media rendered, not yet tokenized)."""
        rng = np.random.default_rng([self.seed, key.step, key.process, _STREAM])
        picks = rng.choice(len(self.tasks), size=self.count, p=self.probs)
        return [build_item(self.data, self.split, self.tasks[t],
                           np.random.default_rng([self.seed, key.step, key.process, _STREAM, row]))
                for row, t in enumerate(picks)]

    def rows(self, key: RowKey) -> Rows:
        corpus = tokenize_corpus(self.items(key), self.processor)
        coins = np.random.default_rng([self.seed, key.step, key.process, _STREAM + 1]).random(len(corpus))
        out = [(choose_prompt(corpus, i, float(u), self.cond_dropout), corpus.target[i]) for i, u in enumerate(coins)]
        check_length(*corpus.longest(), self.context)
        return out


def check_length(length: int, task: str, context: int) -> None:
    """Raise naming ``model.core.max_position_embeddings`` when a ``<bos> prompt target <eos>`` row is too long."""
    if length > context:
        raise InvalidArgumentError(f"model.core.max_position_embeddings={context} is shorter than a training "
                                   f"row ({length} tokens, task {task})")


class Prefetcher:
    """``fn(RowKey(step, process))`` for ``step = start .. stop-1``, computed ahead of the training loop.

    With ``workers=0``, one background thread computes them, at most ``depth`` steps ahead. With ``workers > 0``,
    that many worker processes (forked, one torch thread each) compute whole steps side by side, about ``depth``
    steps in flight, and hand them back in order: the rows are a pure function of the key, so they are the same
    rows whichever worker computed them. :meth:`get` must be called with consecutive steps; an error in a worker
    is raised there. Use as a context manager so the workers stop with the loop.
    """

    def __init__(self, fn: Callable[[RowKey], Rows], start: int, stop: int, process: int = 0,
                 depth: int = 4, workers: int = 0) -> None:
        self._fn, self._next, self._process = fn, start, process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps: Iterator[Rows] | None = None
        if workers > 0:
            methods = multiprocessing.get_all_start_methods()
            loader = torch.utils.data.DataLoader(
                _Steps(fn, process), batch_size=None, sampler=range(start, stop), num_workers=workers,
                collate_fn=_as_is, prefetch_factor=max(1, -(-depth // workers)),
                multiprocessing_context="fork" if "fork" in methods else None,
                generator=torch.Generator().manual_seed(0))  # workers' seeds; the global RNG is left alone
            self._steps = iter(loader)
            return
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._thread = threading.Thread(target=self._work, args=(start, stop), daemon=True, name="anygen-rows")
        self._thread.start()

    def _work(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                item: tuple[int, Rows | BaseException] = (step, self._fn(RowKey(step, self._process)))
            except BaseException as err:  # handed to the training thread, which raises it
                item = (step, err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item[1], BaseException):
                return

    def get(self, step: int) -> Rows:
        """The rows of ``step`` (blocks until a worker has them)."""
        if step != self._next:
            raise InvalidArgumentError(f"Prefetcher.get({step}) out of order: expected step {self._next}")
        self._next = step + 1
        if self._steps is not None:
            return next(self._steps)
        got, rows = self._queue.get()
        if isinstance(rows, BaseException):
            raise rows
        assert got == step
        return rows

    def close(self) -> None:
        self._stop.set()
        self._steps = None  # the loader's iterator shuts its workers down when dropped
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Steps(torch.utils.data.Dataset):
    """Step ``i`` -> its rows, for the worker processes of a :class:`Prefetcher`."""

    def __init__(self, fn: Callable[[RowKey], Rows], process: int) -> None:
        self.fn, self.process = fn, process

    def __getitem__(self, step: int) -> Rows:
        return self.fn(RowKey(step, self.process))


def _as_is(rows: Rows) -> Rows:
    return rows
