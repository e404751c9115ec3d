"""Token-gated LoRA adapters: extra weights that act from the first token of one modality on.

An :class:`GatedAdapters` set belongs to a range of token ids ``[first_id, end_id)`` -- the ids an appended
modality received (:func:`anygen.extension.add_modality`). Each adapted projection (``q_proj``, ``up_proj`` ...)
computes ``W x + gate * (alpha / rank) * B A x``, where ``gate`` is 0 at every position before the row's first
token in the range and 1 from that token on. A forward pre-hook on the core reads ``input_ids`` on every call and
sets the gate; across the calls of one cached generation (prefill, then one token per step) it remembers, per
cache object and row, whether a gated token has been seen. So:

* a sequence without any token of the new modality runs the unchanged core: every old task computes exactly what
  it computed before (the adapters are not even evaluated);
* from the new modality's begin token on, the adapters change queries, keys, values and MLPs -- of the modality's
  codes and of the text that follows them (a description of a signal, say), which a frozen core could not learn.

Adapters are not merged into the core (that would change old tasks); :class:`anygen.model.AnyGen` saves them
beside it (``adapters.safetensors`` and an ``adapters`` entry in ``config.json``) and rebuilds them on load. The
gate is per thread, so several threads may run one model at once.

Example:
    >>> core = build_core(CoreConfig(64, 2, 4, 2, 128, 256), vocab_size=128)      # doctest: +SKIP
    >>> adapters = GatedAdapters(core, AdapterSpec(first_id=100, end_id=128))      # doctest: +SKIP
    >>> adapters.attach(core)                                                      # doctest: +SKIP
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from anygen.errors import InvalidArgumentError, check_range

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AdapterSpec:
    """What an adapter set is: the gated id range, LoRA rank and scale, and the names of the adapted Linears."""

    first_id: int
    end_id: int
    rank: int = 16
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))

    def __post_init__(self) -> None:
        check_range("first_id", self.first_id, 0, None)
        if self.end_id <= self.first_id:
            raise InvalidArgumentError(f"end_id={self.end_id} must be > first_id={self.first_id}")
        check_range("rank", self.rank, 1, 4096)
        check_range("alpha", self.alpha, 0.0, None, low_inclusive=False)
        if not self.targets:
            raise InvalidArgumentError(f"targets must name at least one module, e.g. {LLAMA_PROJECTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LowRank(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5 ** 0.5)
        nn.init.zeros_(self.lora_B.weight)  # starts as the identity change: the extended model equals the old one


class GatedAdapters(nn.Module):
    """LoRA pairs for every Linear of ``core`` whose name ends in one of ``spec.targets``, gated by token id.

    Args:
        core: the transformers causal LM the adapters are built for (not modified until :meth:`attach`).
        spec: the gated id range and the LoRA settings.
    """

    def __init__(self, core: nn.Module, spec: AdapterSpec) -> None:
        super().__init__()
        self.spec = spec
        self.scale = spec.alpha / spec.rank
        targets = _targets(core, spec.targets)
        # ModuleDict keys may not contain dots: "model.layers.0.self_attn.q_proj" -> "model__layers__0__...".
        self.pairs = nn.ModuleDict({name.replace(".", "__"): _LowRank(m.in_features, m.out_features, spec.rank)
                                    for name, m in targets.items()})
        self._local = threading.local()  # .gate: (B, T, 1) of this thread's current forward, None = nothing gated
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # KV cache -> (B,) bool
        self._handles: list[Any] = []

    def attach(self, core: nn.Module) -> "GatedAdapters":
        """Hook the adapters into ``core`` (idempotent); the core's own parameters and state-dict keys are kept."""
        self.detach()
        self._handles.append(core.register_forward_pre_hook(self._set_gate, with_kwargs=True))
        for name, module in _targets(core, self.spec.targets).items():
            self._handles.append(module.register_forward_hook(self._adapt(self.pairs[name.replace(".", "__")])))
        return self

    def detach(self) -> None:
        """Remove the hooks: the core computes as if the adapters did not exist."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def gate(self, input_ids: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T)`` bool: True from each row's first token id in ``[first_id, end_id)`` on (from the start
        for rows whose ``seen`` flag says an earlier call already had one)."""
        inside = (input_ids >= self.spec.first_id) & (input_ids < self.spec.end_id)
        gate = inside.cumsum(-1) > 0
        return gate if seen is None else gate | seen[:, None]

    def _set_gate(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise InvalidArgumentError("a core with gated adapters must be called with input_ids (the gate is "
                                       "read from the token ids), not inputs_embeds")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        seen = None
        if cache is not None and _cached_tokens(cache, kwargs.get("cache_position")) > 0:
            seen = self._seen.get(cache)
            if seen is None or seen.shape[0] != input_ids.shape[0]:
                raise InvalidArgumentError("gated adapters: this call continues a KV cache whose earlier calls "
                                           "they did not see; run the prefill through the same model")
        gate = self.gate(input_ids, seen)
        if cache is not None:
            self._seen[cache] = gate[:, -1]
        self._local.gate = gate.unsqueeze(-1).to(self.pairs_dtype) if bool(gate.any()) else None

    @property
    def pairs_dtype(self) -> torch.dtype:
        return next(self.pairs.parameters()).dtype

    def _adapt(self, pair: _LowRank):
        def hook(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            gate = getattr(self._local, "gate", None)
            if gate is None:
                return out
            delta = pair.lora_B(pair.lora_A(args[0].to(pair.lora_A.weight.dtype)))
            return out + (self.scale * gate * delta).to(out.dtype)
        return hook


def has_gated_adapters(core: nn.Module) -> bool:
    """Whether ``core`` runs with :class:`GatedAdapters` attached. Their gates follow the token ids each KV cache
    object has seen, so a cache must be continued by calls on the same object and rows (no copies of it)."""
    return any(isinstance(getattr(h, "__self__", None), GatedAdapters) for h in core._forward_pre_hooks.values())


def _cached_tokens(cache: Any, cache_position: torch.Tensor | None) -> int:
    """How many positions the cache held before this call (the first cache slot the call writes)."""
    if cache_position is not None:
        return int(cache_position.reshape(-1)[0])
    return int(cache.get_seq_length())


def _targets(core: nn.Module, names: Sequence[str]) -> dict[str, nn.Linear]:
    found = {name: m for name, m in core.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in names}
    if not found:
        raise InvalidArgumentError(f"targets={list(names)} match no Linear of the core; Llama-style cores have "
                                   f"{LLAMA_PROJECTIONS}")
    missing = sorted(set(names) - {n.rsplit(".", 1)[-1] for n in found})
    if missing:
        raise InvalidArgumentError(f"targets {missing} match no Linear of the core")
    return found
