"""What a pipeline shares with diffusers' ``DiffusionPipeline``: moving it to a device or dtype, progress bars,
saving and sharing the model it runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from anygen.errors import InvalidArgumentError


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this machine can hold tensors there, else an error naming it: not a
    device name, not built into this torch (``"cuda"`` on a CPU build), no such index, or ``"meta"`` (which keeps
    shapes only: a model moved there would lose its weights)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InvalidArgumentError(f"device={device!r} is not a device name (e.g. 'cpu', 'cuda', 'cuda:1', 'mps'): "
                                   f"{err}") from err
    if parsed.type == "meta":
        raise InvalidArgumentError("device='meta' holds no weights; a model moved there would lose them")
    try:
        torch.empty(0, device=parsed)
    except (AssertionError, RuntimeError) as err:  # torch raises AssertionError for CUDA on a CPU-only build
        raise InvalidArgumentError(f"device={device!r} is not available on this machine ({err}); "
                                   "use device='cpu'") from err
    return parsed


def as_dtype(value: torch.dtype | str | None, name: str = "torch_dtype") -> torch.dtype | None:
    """``value`` as a floating-point ``torch.dtype``: a dtype, or its name as transformers takes it
    (``"bfloat16"``, ``"torch.float16"``); ``None`` and ``"auto"`` keep the saved dtype (None)."""
    if value is None or value == "auto":
        return None
    dtype = _named_dtype(value)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(f"{name}={value!r} must be a floating-point torch.dtype or its name, e.g. "
                                   "torch.bfloat16 or 'float16' ('auto' keeps the saved one)")
    return dtype


def _named_dtype(value: object) -> object:
    """The ``torch.dtype`` a string names (``"bfloat16"``, ``"torch.float16"``), else ``value`` as it is."""
    if isinstance(value, str):
        found = getattr(torch, value.removeprefix("torch."), None)
        return found if isinstance(found, torch.dtype) else value
    return value


class PipelineBase:
    """Needs ``self.model`` (an :class:`~anygen.model.AnyGen`)."""

    model: Any
    _progress_bar_config: dict[str, Any]

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        """Save the model (``AnyGen.save_pretrained``), e.g. to share it or to :meth:`push_to_hub` it."""
        self.model.save_pretrained(directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the model to a Hub repository; see :func:`anygen.hub.push_to_hub`. Returns the commit URL."""
        from anygen.hub import push_to_hub

        return push_to_hub(self.model, repo_id, **kwargs)

    def to(self, *args: str | torch.device | torch.dtype | None) -> "PipelineBase":
        """Move to a device and/or cast, as ``pipe.to("cuda")``, ``pipe.to(torch.bfloat16)`` (or ``"bfloat16"``) or
        both.

        The dtype applies to the core (the transformer); the media tokenizers and decoders stay in float32, the
        dtype their inputs arrive in, and move with the device. Returns the pipeline.
        """
        args = tuple(_named_dtype(a) for a in args)
        dtypes = [a for a in args if isinstance(a, torch.dtype)]
        devices = [a for a in args if a is not None and not isinstance(a, torch.dtype)]
        if len(dtypes) > 1 or len(devices) > 1 or any(not isinstance(d, (str, torch.device)) for d in devices):
            raise InvalidArgumentError(f"to() takes one device and/or one torch.dtype, got {args!r}")
        if dtypes and not dtypes[0].is_floating_point:
            raise InvalidArgumentError(f"torch_dtype={dtypes[0]} must be a floating-point dtype")
        if devices:
            device = usable_device(devices[0])  # checked before anything moves
            self.model.to(device)
            for part in [*self.model.tokenizers.values(), *self.model.decoders.values()]:
                if isinstance(part, torch.nn.Module):
                    part.to(device)
        if dtypes:
            self.model.core.to(dtypes[0])
            self.model.adapters.to(dtypes[0])
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.core.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.core.parameters()).dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Settings of the tqdm bars (e.g. ``disable=True``); bars appear only for calls longer than a second."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None, desc: str | None = None):
        return tqdm(iterable, total=total, **{"desc": desc, "delay": 1.0, "leave": False,
                                              **self._progress_bar_config})
