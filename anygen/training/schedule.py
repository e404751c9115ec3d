"""The learning-rate schedule of every recipe: one of transformers' schedulers, chosen by name.

``lr_scheduler`` names any schedule of the step that transformers' ``SchedulerType`` knows (``cosine_with_min_lr``,
the recipes' default: linear warm-up from 0, then cosine decay to ``min_lr``; ``linear``, ``constant_with_warmup``,
``warmup_stable_decay`` ...); ``lr_scheduler_kwargs`` are that scheduler's own extra arguments (e.g.
``{num_decay_steps: 200}`` for ``warmup_stable_decay``). A schedule is a function of the step, so a resumed run
positions it at its checkpoint's step and nothing of it needs saving.

Example:
    >>> scheduler = lr_scheduler(optimizer, "cosine_with_min_lr", base_lr=3e-4, warmup=100, total=1000,
    ...                          min_lr_rate=0.1, start=0)  # doctest: +SKIP
    >>> for step in range(1000):  # doctest: +SKIP
    ...     train_step(lr=scheduler.get_last_lr()[0]); scheduler.step()
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import SchedulerType
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

from anygen.errors import InvalidArgumentError

# These two adapt to a metric passed to ``step()``; the recipes' schedules depend on the step alone.
METRIC_DRIVEN = ("reduce_lr_on_plateau", "greedy")
SCHEDULERS = tuple(kind.value for kind in SchedulerType if kind.value not in METRIC_DRIVEN)
MIN_RATE_ARGUMENTS = ("min_lr_rate", "min_lr_ratio")  # how transformers' schedulers name the floor


def check_scheduler(key: str, name: str, kwargs: dict[str, Any]) -> None:
    """Raise naming ``key`` (e.g. ``optim.lr_scheduler``) when ``name`` is no step schedule of transformers or
    ``kwargs`` (``<key>_kwargs``) do not fit it; builds it once on a one-parameter optimizer, which is cheap."""
    if name not in SCHEDULERS:
        reason = " adapts to a metric, not the step" if name in METRIC_DRIVEN else " is unknown"
        raise InvalidArgumentError(f"{key}={name!r}{reason}; valid: {list(SCHEDULERS)}")
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        lr_scheduler(probe, name, base_lr=1.0, warmup=1, total=10, min_lr_rate=0.1, start=0, kwargs=kwargs)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(f"{key}_kwargs={kwargs} do not fit {key}={name!r}: {err}") from err


def lr_scheduler(optimizer: torch.optim.Optimizer, name: str, *, base_lr: float, warmup: int, total: int,
                 min_lr_rate: float, start: int, kwargs: dict[str, Any] | None = None) -> LRScheduler:
    """transformers' schedule ``name`` from ``base_lr`` over ``total`` optimizer steps (``warmup`` of them
    warming up), positioned at step ``start``: ``get_last_lr()`` is the rate of step ``start``; call ``step()``
    after each optimizer step. ``min_lr_rate`` (floor / ``base_lr``) goes to the schedules that take a floor
    unless ``kwargs`` set one."""
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    accepted = inspect.signature(function).parameters
    offered: dict[str, Any] = {"num_warmup_steps": warmup, "num_training_steps": total, "last_epoch": start - 1}
    kwargs = dict(kwargs or {})
    if not any(k.startswith("min_lr") for k in kwargs):
        offered.update({k: min_lr_rate for k in MIN_RATE_ARGUMENTS})
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr  # what torch reads to resume a schedule at ``last_epoch``
    try:
        return function(optimizer, **{k: v for k, v in offered.items() if k in accepted}, **kwargs)
    finally:
        for group in optimizer.param_groups:  # the scheduler keeps it (base_lrs): the optimizer's state, and so
            del group["initial_lr"]           # the checkpoints, stay as they were without a scheduler
