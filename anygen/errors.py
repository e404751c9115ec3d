"""One exception hierarchy for the whole library.

Every error anygen raises on purpose derives from :class:`AnygenError` *and* from the builtin a caller would
naturally catch (``ValueError`` for bad arguments and media, ``OSError`` for files, ``RuntimeError`` for faults
found while running), so ``except ValueError`` keeps working for people who do not know our names.
"""

from __future__ import annotations


class AnygenError(Exception):
    """Base class of every error anygen raises deliberately."""


class InvalidArgumentError(AnygenError, ValueError):
    """An argument is outside its valid range; the message names the argument, the value and the range."""


class MediaError(AnygenError, ValueError):
    """An image or audio input cannot be read or is not acceptable (corrupt, too large, NaN samples...)."""


class CheckpointError(AnygenError, OSError):
    """A saved model or checkpoint is missing, malformed, unsafe (pickle) or does not match the model."""


class GenerationError(AnygenError, RuntimeError):
    """Generation hit a fault at run time (e.g. non-finite logits)."""


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise :class:`InvalidArgumentError` unless ``low <= value <= high`` (bounds optional, NaN always fails)."""
    ok = value == value  # NaN check without importing math
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        bracket = ("[" if low_inclusive else "(") + f"{lo}, {hi}" + ("]" if high_inclusive else ")")
        raise InvalidArgumentError(f"{name}={value!r} is outside the valid range {bracket}")
