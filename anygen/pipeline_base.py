"""What a pipeline shares with diffusers' ``DiffusionPipeline``: moving it to a device or dtype, progress bars,
saving and sharing the model it runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from anygen.errors import InvalidArgumentError


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
        """Move to a device and/or cast, as ``pipe.to("cuda")``, ``pipe.to(torch.bfloat16)`` or both.

        The dtype applies to the core (the transformer); the media tokenizers and decoders stay in float32, the
        dtype their inputs arrive in, and move with the device. Returns the pipeline.
        """
        dtypes = [a for a in args if isinstance(a, torch.dtype)]
        devices = [a for a in args if a is not None and not isinstance(a, torch.dtype)]
        if len(dtypes) > 1 or len(devices) > 1 or any(not isinstance(d, (str, torch.device)) for d in devices):
            raise InvalidArgumentError(f"to() takes one device and/or one torch.dtype, got {args!r}")
        if dtypes and not dtypes[0].is_floating_point:
            raise InvalidArgumentError(f"torch_dtype={dtypes[0]} must be a floating-point dtype")
        if devices:
            device = torch.device(devices[0])
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
