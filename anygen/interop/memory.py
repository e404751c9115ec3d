"""Memory a model needs: its core's weights (parameter count x bytes per value) and the KV cache per token.

The parameter count comes from building the core on the meta device from its config (no memory, no weights), so
it is exact for any config, e.g. a converted model's ``config.json`` before its weights are downloaded or loaded.
Image tokenizers (VQ-VAEs, tens of millions of parameters) and activations come on top.

Example:
    >>> from transformers import LlamaConfig
    >>> core = LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                    intermediate_size=128).to_dict()
    >>> est = estimate(core, "LlamaForCausalLM", torch.bfloat16)
    >>> est.parameters, est.weight_bytes, est.kv_bytes_per_token
    (210240, 420480, 512)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anygen.core import AUTO_CORE, core_from_config
from anygen.errors import CheckpointError
from anygen.saved_model import unique_tensors


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a core's weights and of its KV cache per token (keys and values of every layer), in one dtype."""

    parameters: int
    dtype: torch.dtype
    weight_bytes: int
    kv_bytes_per_token: int

    def total(self, tokens: int, batch: int = 1) -> int:
        """Weights plus a KV cache of ``tokens`` positions for ``batch`` rows (CFG doubles the rows)."""
        return self.weight_bytes + self.kv_bytes_per_token * tokens * batch


def estimate(core: Mapping[str, Any], core_class: str = AUTO_CORE,
             dtype: torch.dtype = torch.bfloat16) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of the core a ``core`` config (``config.json``'s ``core`` section) describes."""
    with torch.device("meta"):
        model = core_from_config(dict(core), "sdpa", core_class)
    parameters = sum(t.numel() for t in unique_tensors(model).values())  # tied matrices once
    size = torch.finfo(dtype).bits // 8
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return MemoryEstimate(parameters, dtype, parameters * size,
                          2 * config.num_hidden_layers * kv_heads * head_dim * size)


def estimate_model(directory: str | Path, dtype: torch.dtype = torch.bfloat16) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a saved anygen model, from its ``config.json`` alone."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return estimate(config["core"], config.get("core_class", AUTO_CORE), dtype)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read the core config of {path}: {err}") from err


def markdown_table(rows: Sequence[tuple[str, MemoryEstimate]], tokens: int = 4096) -> str:
    """A Markdown table: name, parameters, dtype, weights, and weights + KV cache for ``tokens`` positions."""
    lines = [f"| model | parameters | dtype | weights | + KV cache of {tokens} tokens |", "|---|---|---|---|---|"]
    for name, est in rows:
        dtype = str(est.dtype).removeprefix("torch.")
        lines.append(f"| {name} | {est.parameters / 1e9:.2f} B | {dtype} | {est.weight_bytes / 2**30:.1f} GiB | "
                     f"{est.total(tokens) / 2**30:.1f} GiB |")
    return "\n".join(lines)
