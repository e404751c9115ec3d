"""Metrics of the core recipe: a window of losses and token counts, written as JSONL (and TensorBoard).

``<out_dir>/metrics.jsonl`` holds one record per log step::

    {"step": 100, "lr": 0.001, "loss": 3.21, "losses": {"audio": 3.9, "image": 2.8, "text": 3.5},
     "tokens_per_s": 612.0, "tokens_per_process": [30210, 29874]}

``loss`` is the mean over every process' target tokens; ``losses`` are per modality, from the main process;
``tokens_per_s`` counts every non-padding token of every process.

Example:
    >>> logger = MetricsLogger(Path("runs/x"), ["jsonl"], enabled=True)  # doctest: +SKIP
    >>> logger.write({"step": 1, "lr": 1e-3, **window.flush(accelerator)})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from anygen.errors import InvalidArgumentError


class LossWindow:
    """Losses and token counts since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.micro_batches, self.tokens, self.waited = 0.0, 0, 0, 0.0
        self.losses: dict[str, list[float]] = {}
        self.started = time.monotonic()

    def add(self, loss: torch.Tensor, losses: dict[str, torch.Tensor], tokens: int) -> None:
        self.loss += float(loss.detach())
        self.micro_batches += 1
        self.tokens += tokens
        for name, value in losses.items():
            self.losses.setdefault(name, []).append(float(value.detach()))

    def wait(self, seconds: float) -> None:
        """Time the loop spent waiting for its rows (the stream fell behind the core)."""
        self.waited += seconds

    def flush(self, accelerator: Accelerator) -> dict[str, Any]:
        """Mean loss over every process; per-modality losses of this (the main) process; tokens/s of all; the
        share of this process' wall time spent waiting for data."""
        local = torch.tensor([[self.loss, self.micro_batches, self.tokens]], dtype=torch.float64,
                             device=accelerator.device)
        table = accelerator.gather(local).cpu()  # (processes, 3)
        seconds = max(time.monotonic() - self.started, 1e-9)
        record = {"loss": float(table[:, 0].sum() / table[:, 1].sum()),
                  "losses": {k: sum(v) / len(v) for k, v in sorted(self.losses.items())},
                  "tokens_per_s": float(table[:, 2].sum()) / seconds,
                  "tokens_per_process": [int(n) for n in table[:, 2]],
                  "data_wait": self.waited / seconds}
        self.reset()
        return record


class MetricsLogger:
    """``metrics.jsonl`` (one JSON record per log step) and optionally TensorBoard; main process only."""

    def __init__(self, out_dir: Path, log_with: list[str], enabled: bool) -> None:
        self.path, self.enabled, self.jsonl, self.writer = out_dir / "metrics.jsonl", enabled, "jsonl" in log_with, None
        if enabled and "tensorboard" in log_with:
            self.writer = _tensorboard_writer(out_dir / "tensorboard")

    def drop_after(self, step: int) -> None:
        """Forget records past ``step`` (logged after the checkpoint a run resumes from)."""
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.jsonl:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            scalars = {"loss": record["loss"], "lr": record["lr"], "tokens_per_s": record["tokens_per_s"],
                       **{f"loss_{k}": v for k, v in record["losses"].items()}}
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> float:
    """The step of a JSONL record; a line cut short by a crash counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _tensorboard_writer(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise InvalidArgumentError("train.log_with includes 'tensorboard' but the tensorboard package is not "
                                   "installed (pip install tensorboard)") from err
    return SummaryWriter(str(directory))
