"""A static KV cache whose rows write at their own columns, so rows that joined a batch at different steps can
share one decode call (continuous batching).

Each layer holds ``(rows, kv_heads, length, head_dim)`` keys and values like transformers' ``StaticLayer``; before
a decode call the caller sets ``write_at`` ``(rows,)``, the column each row's new token goes to, and passes a 4D
mask that shows each row only its own columns. Columns of finished or idle rows keep finite values, which the mask
hides exactly (a masked score adds a zero to the softmax sum).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, StaticLayer

__all__ = ["SlotLayer", "slot_cache"]


class SlotLayer(StaticLayer):
    """A static cache layer whose rows write at their own columns (``write_at``, ``(R,)``) instead of one shared
    column, so rows that joined the batch at different steps can share a decode call."""

    def __init__(self, max_cache_len: int, write_at: torch.Tensor) -> None:
        super().__init__(max_cache_len)
        self.write_at = write_at

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        r, h, _, d = key_states.shape  # (R, heads, 1, head_dim)
        index = self.write_at.view(r, 1, 1, 1).expand(r, h, 1, d)
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, index, value_states)
        return self.keys, self.values


def slot_cache(core: torch.nn.Module, rows: int, length: int, write_at: torch.Tensor) -> Cache:
    """A cache of ``rows`` x ``length`` columns for every layer of ``core``, allocated now (zeros, the core's dtype
    and device); all layers write at ``write_at``."""
    config = core.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    param = next(core.parameters())
    layers = [SlotLayer(length, write_at) for _ in range(config.num_hidden_layers)]
    empty = torch.zeros(rows, heads, 1, head_dim, dtype=param.dtype, device=param.device)
    for layer in layers:
        layer.lazy_initialization(empty, empty)
    return Cache(layers=layers)
