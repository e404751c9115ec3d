"""Metrics of the training recipes: a window of losses, written as JSONL and to any tracker accelerate supports.

``train.log_with`` lists where records go: ``jsonl`` (the default; ``<out_dir>/metrics.jsonl``, one JSON record per
line) and accelerate's trackers by name (``tensorboard``, ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``,
``dvclive``, ``swanlab``, ``trackio`` ...; :func:`tracker_names`). accelerate starts them (``Accelerator(log_with=...,
project_config=...)``, ``init_trackers("anygen", config)``) and receives every number of a record through
``accelerator.log`` (nested ones as ``losses/text``); TensorBoard and Aim write under ``<out_dir>/logs``, the others
follow their own settings. A name that is unknown, or whose package is not installed, is refused when the config
is read; a tracker that reaches a server (W&B, Comet ...) starts only when its name is listed.

A log record of the core recipe::

    {"step": 100, "lr": 0.001, "loss": 3.21, "losses": {"audio": 3.9, "image": 2.8, "text": 3.5},
     "tokens_per_s": 612.0, "tokens_per_process": [30210, 29874], "data_wait": 0.01, "cpu_s": 812.4}

``loss`` is the mean over every process' micro-batches; ``losses`` are its parts (per modality; per loss term for a
tokenizer), from the main process; ``tokens_per_s`` counts every non-padding token of every process (a tokenizer's
records count ``samples``); ``data_wait`` is the share of the time the loop waited for its data. Evaluations are
logged as ``{"step": 500, "eval": {...}}``.

Example:
    >>> accelerator = Accelerator(**tracking(["jsonl", "tensorboard"], Path("runs/x")))  # doctest: +SKIP
    >>> logger = MetricsLogger(accelerator, Path("runs/x"), ["jsonl", "tensorboard"])  # doctest: +SKIP
    >>> logger.write({"step": 1, "lr": 1e-3, **window.flush(accelerator)})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from anygen.errors import InvalidArgumentError

LOCAL = "jsonl"  # the tracker of anygen itself: <out_dir>/metrics.jsonl
PROJECT = "anygen"  # the project name trackers file runs under


def tracker_names() -> list[str]:
    """Every name ``log_with`` accepts: ``jsonl`` and the trackers accelerate knows (not ``all``, which would start
    every installed tracker, servers included)."""
    return [LOCAL, *sorted({kind.value for kind in LoggerType} - {"all"} | set(LOGGER_TYPE_TO_CLASS))]


def check_log_with(key: str, names: list[str]) -> None:
    """Raise naming ``key`` when a name of ``names`` is unknown or its package is not installed."""
    valid = tracker_names()
    for name in names:
        if name not in valid:
            raise InvalidArgumentError(f"{key} has unknown tracker {name!r}; valid: {valid}")
        if name in LoggerType.list() and LoggerType(name) not in get_available_trackers():
            raise InvalidArgumentError(f"{key} includes {name!r} but its package is not installed (pip install "
                                       f"{name}); installed: {[LOCAL, *map(str, get_available_trackers())]}")


def tracking(log_with: list[str], out_dir: Path) -> dict[str, Any]:
    """The arguments of ``Accelerator`` that make it start ``log_with``'s trackers, writing under ``<out_dir>/logs``."""
    return {"log_with": [name for name in log_with if name != LOCAL] or None,  # [] would make accelerate warn
            "project_config": ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs"))}


class LossWindow:
    """Losses and counts (``unit``: tokens, samples) since the last log line."""

    def __init__(self, unit: str = "tokens") -> None:
        self.unit = unit
        self.reset()

    def reset(self) -> None:
        self.loss, self.micro_batches, self.count, self.waited = 0.0, 0, 0, 0.0
        self.losses: dict[str, list[float]] = {}
        self.started = time.monotonic()

    def add(self, loss: torch.Tensor | float, losses: Mapping[str, torch.Tensor | float], count: int) -> None:
        self.loss += _number(loss)
        self.micro_batches += 1
        self.count += count
        for name, value in losses.items():
            self.losses.setdefault(name, []).append(_number(value))

    def wait(self, seconds: float) -> None:
        """Time the loop spent waiting for its data (e.g. the stream fell behind the core)."""
        self.waited += seconds

    def flush(self, accelerator: Accelerator) -> dict[str, Any]:
        """Mean loss over every process; mean parts of this (the main) process; units/s of all; the share of this
        process' wall time spent waiting for data."""
        local = torch.tensor([[self.loss, self.micro_batches, self.count]], dtype=torch.float64,
                             device=accelerator.device)
        table = accelerator.gather(local).cpu()  # (processes, 3)
        seconds = max(time.monotonic() - self.started, 1e-9)
        record = {"loss": float(table[:, 0].sum() / table[:, 1].sum()),
                  "losses": {k: sum(v) / len(v) for k, v in sorted(self.losses.items())},
                  f"{self.unit}_per_s": float(table[:, 2].sum()) / seconds,
                  f"{self.unit}_per_process": [int(n) for n in table[:, 2]],
                  "data_wait": self.waited / seconds}
        self.reset()
        return record


class MetricsLogger:
    """``metrics.jsonl`` and accelerate's trackers of ``accelerator`` (built with :func:`tracking`); main process
    only. ``config`` (nested dicts) is stored with the trackers' run, flattened to ``a.b`` keys."""

    def __init__(self, accelerator: Accelerator, out_dir: Path, log_with: list[str],
                 config: dict[str, Any] | None = None) -> None:
        self.accelerator, self.enabled = accelerator, accelerator.is_main_process
        self.path = out_dir / "metrics.jsonl" if LOCAL in log_with else None
        if accelerator.log_with:
            accelerator.init_trackers(PROJECT, config=None if config is None else _flat(config))

    def drop_after(self, step: int) -> None:
        """Forget JSONL records past ``step`` (logged after the checkpoint a run resumes from)."""
        if self.enabled and self.path is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with a ``step``) to the JSONL file and log its numbers to the trackers."""
        if not self.enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log(_scalars({k: v for k, v in record.items() if k != "step"}), step=record["step"])

    def close(self) -> None:
        """Finish the trackers (flush and close their files). Not ``accelerator.end_training()``: that also
        destroys the process group, which the recipe (its final export) and its caller may still need."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()


def _number(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record; nested mappings as ``outer/inner``; lists and strings left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b": value}`` with values trackers store (bool, int, float, str)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def _step_of(line: str) -> float:
    """The step of a JSONL record; a line cut short by a crash counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")
