"""The one result type every evaluator returns, and the batching helper they share."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class EvalResult:
    """Scores of one evaluation suite.

    Attributes:
        suite: suite name ("shapes", "caption", ...).
        overall: mean of the per-category scores (GenEval's convention), in [0, 1].
        per_category: score per category, in [0, 1].
        n: number of scored items.
        details: one JSON-friendly dict per item (what was asked, what was found, pass / fail).
        metrics: further named scores (e.g. ``strict_overall``, ``item_accuracy``).
    """

    suite: str
    overall: float
    per_category: dict[str, float]
    n: int
    details: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise (and write to ``path`` when given)."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text)
        return text


def build_result(suite: str, categories: Sequence[str], passed: Sequence[bool],
                 details: list[dict[str, Any]], metrics: dict[str, float] | None = None) -> EvalResult:
    """Aggregate per-item pass/fail flags into an :class:`EvalResult` (overall = mean over categories)."""
    per_category: dict[str, list[bool]] = {}
    for category, ok in zip(categories, passed):
        per_category.setdefault(category, []).append(bool(ok))
    scores = {c: sum(v) / len(v) for c, v in sorted(per_category.items())}
    overall = sum(scores.values()) / len(scores) if scores else 0.0
    extra = {"item_accuracy": sum(map(bool, passed)) / len(passed) if passed else 0.0, **(metrics or {})}
    return EvalResult(suite, overall, scores, len(passed), details, extra)


def batched(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``batch_size``."""
    for start in range(0, len(items), max(1, batch_size)):
        yield items[start:start + batch_size]


def call_batched(fn: Callable[[list[T]], list[Any]], items: Sequence[T], batch_size: int, name: str) -> list[Any]:
    """Run ``fn`` over ``items`` in batches and check it returns one output per input."""
    from anygen.errors import InvalidArgumentError

    outputs: list[Any] = []
    for chunk in batched(items, batch_size):
        out = list(fn(list(chunk)))
        if len(out) != len(chunk):
            raise InvalidArgumentError(f"{name} returned {len(out)} outputs for {len(chunk)} inputs")
        outputs.extend(out)
    return outputs
