"""Token-gated LoRA adapters: extra weights that act only at the positions of one modality's tokens.

An :class:`GatedAdapters` set belongs to a range of token ids ``[first_id, end_id)`` -- the ids an appended
modality received (:func:`anygen.extension.add_modality`). Each adapted projection (``q_proj``, ``up_proj`` ...)
computes ``W x + gate * (alpha / rank) * B A x``, where ``gate`` is 1 at positions whose input token lies in the
range and 0 elsewhere. A forward pre-hook on the core reads ``input_ids`` on every call (prefill or one cached
decode step alike) and sets the gate, so:

* a sequence without any token of the new modality runs the unchanged core: every old task computes exactly what
  it computed before (the adapters are not even evaluated);
* at the new modality's positions (its begin / end tokens and codes) the adapters change the queries, keys,
  values and MLPs, so text positions read adapted keys / values of the new modality through attention -- the
  modality-specific-weights idea of mixture-of-transformers models, at LoRA cost.

Adapters are not merged into the core (that would change old tasks); :class:`anygen.model.AnyGen` saves them
beside it (``adapters.safetensors`` and an ``adapters`` entry in ``config.json``) and rebuilds them on load.

Example:
    >>> core = build_core(CoreConfig(64, 2, 4, 2, 128, 256), vocab_size=128)      # doctest: +SKIP
    >>> adapters = GatedAdapters(core, first_id=100, end_id=128, rank=4)           # doctest: +SKIP
    >>> adapters.attach(core)                                                      # doctest: +SKIP
"""

from __future__ import annotations

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
        self._gate: torch.Tensor | None = None  # (B, T, 1) for the current forward; None = no position gated
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

    def gate(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T, 1)`` float: 1 where the token id is in ``[first_id, end_id)``."""
        inside = (input_ids >= self.spec.first_id) & (input_ids < self.spec.end_id)
        return inside.unsqueeze(-1).to(self.pairs_dtype)

    @property
    def pairs_dtype(self) -> torch.dtype:
        return next(self.pairs.parameters()).dtype

    def _set_gate(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise InvalidArgumentError("a core with gated adapters must be called with input_ids (the gate is "
                                       "read from the token ids), not inputs_embeds")
        gate = self.gate(input_ids)
        self._gate = gate if bool(gate.any()) else None

    def _adapt(self, pair: _LowRank):
        def hook(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if self._gate is None:
                return out
            delta = pair.lora_B(pair.lora_A(args[0].to(pair.lora_A.weight.dtype)))
            return out + (self.scale * self._gate * delta).to(out.dtype)
        return hook


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
