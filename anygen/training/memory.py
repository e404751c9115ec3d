"""Memory per process of the model states of AdamW training, for each way of spreading a model over processes.

Counted: the weights, their gradients and the optimizer's state (Adam's two moments, plus the fp32 master copy
DeepSpeed keeps next to 16-bit weights), in bytes per parameter, divided by the number of processes where the
strategy shards them (the accounting of the ZeRO paper, Rajbhandari et al. 2020). Not counted: activations (they
grow with batch size and sequence length; ``train.activation_checkpointing`` cuts them to about one layer's),
the layer FSDP2 / ZeRO-3 gather for the moment they run it, communication buffers and the CUDA context.

Example:
    >>> state_memory(1_000_000_000, "zero3", processes=8).total / 2**30  # GiB per GPU, bf16
    1.862645149230957
"""

from __future__ import annotations

from dataclasses import dataclass

from anygen.errors import InvalidArgumentError, check_range

# strategy -> bytes per parameter (weights, gradients, optimizer state) with bf16 and with fp32 training, and which
# of the three are sharded over the processes.
_BYTES = {
    # accelerate's bf16 under DDP is autocast: the weights, gradients and moments stay fp32.
    "ddp": {"bf16": (4, 4, 8), "fp32": (4, 4, 8), "sharded": (False, False, False)},
    # FSDP2 keeps fp32 shards and casts each gathered layer to bf16 for compute (MixedPrecisionPolicy).
    "fsdp2": {"bf16": (4, 4, 8), "fp32": (4, 4, 8), "sharded": (True, True, True)},
    # DeepSpeed keeps bf16 weights and gradients and an fp32 master copy with the moments (4 + 4 + 4 bytes).
    "zero2": {"bf16": (2, 2, 12), "fp32": (4, 4, 12), "sharded": (False, True, True)},
    "zero3": {"bf16": (2, 2, 12), "fp32": (4, 4, 12), "sharded": (True, True, True)},
}
STRATEGIES = tuple(_BYTES)


@dataclass(frozen=True)
class StateMemory:
    """Bytes per process: ``weights``, ``grads``, ``optimizer``; ``total`` is their sum."""

    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


def state_memory(parameters: int, strategy: str, processes: int = 1, bf16: bool = True) -> StateMemory:
    """Memory per process of ``parameters`` trainable parameters under ``strategy`` (one of :data:`STRATEGIES`)
    with ``processes`` processes, in bf16 (``bf16=True``) or fp32."""
    if strategy not in _BYTES:
        raise InvalidArgumentError(f"strategy={strategy!r} must be one of {list(STRATEGIES)}")
    check_range("parameters", parameters, 1, None)
    check_range("processes", processes, 1, None)
    row = _BYTES[strategy]
    per = [bytes_ / (processes if sharded else 1)
           for bytes_, sharded in zip(row["bf16" if bf16 else "fp32"], row["sharded"])]
    return StateMemory(*(parameters * b for b in per))


def memory_table(parameter_counts: dict[str, int], processes: int, bf16: bool = True) -> str:
    """A markdown table: GiB per process of each strategy for each named parameter count."""
    head = "| parameters | " + " | ".join(STRATEGIES) + " |"
    rule = "|---|" + "---:|" * len(STRATEGIES)
    rows = [f"| {name} | " + " | ".join(f"{state_memory(n, s, processes, bf16).total / 2**30:.2f}"
                                        for s in STRATEGIES) + " |" for name, n in parameter_counts.items()]
    return "\n".join([head, rule, *rows])
