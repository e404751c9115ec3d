"""One exception hierarchy for the whole library.

Every error anygen raises on purpose derives from :class:`AnygenError` *and* from the builtin a caller would
naturally catch (``ValueError`` for bad arguments and media, ``OSError`` for files, ``RuntimeError`` for faults
found while running), so ``except ValueError`` keeps working for people who do not know our names.
"""

from __future__ import annotations

import math


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
    """Raise :class:`InvalidArgumentError` unless ``value`` is a finite real number with ``low <= value <= high``.

    Bounds are optional; NaN and +-inf always fail (a missing bound means "any finite value"), and so do
    booleans and strings, so no caller has to repeat those checks.
    """
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    bracket = ("[" if low_inclusive and low is not None else "(") + f"{lo}, {hi}"
    bracket += "]" if high_inclusive and high is not None else ")"
    if isinstance(value, (bool, str, bytes)) or not _is_real(value):
        raise InvalidArgumentError(f"{name}={value!r} must be a finite number in {bracket}")
    number = float(value)
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number >= low if low_inclusive else number > low
    if ok and high is not None:
        ok = number <= high if high_inclusive else number < high
    if not ok:
        raise InvalidArgumentError(f"{name}={value!r} is outside the valid range {bracket} (finite values only)")


def _is_real(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return False
    return True
