"""A narrow adapter over vector-quantize-pytorch: one config with a handful of fields, one result type.

vector-quantize-pytorch offers dozens of constructor options and return tuples whose length depends on flags.
anygen's tokenizers only need: vectors ``(B, N, D)`` in, codes ``(B, N, K)`` out (``K`` codebooks per frame), the
quantised vectors for the decoder, and an auxiliary loss. :class:`Quantizer` gives exactly that for a plain /
residual VQ (low-dimensional, l2-normalised codes with EMA updates and dead-code replacement, as in LlamaGen) or
a finite scalar quantiser (FSQ, no codebook to collapse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, ResidualFSQ, ResidualVQ, VectorQuantize

from anygen.errors import InvalidArgumentError


@dataclass
class QuantizerConfig:
    """Settings of a :class:`Quantizer`.

    Attributes:
        kind: ``"vq"`` (learned codebook, cosine similarity, EMA) or ``"fsq"`` (finite scalar quantisation).
        codebook_size: codes per codebook; for ``"fsq"`` it must equal the product of ``fsq_levels``.
        codebook_dim: dimension of the (l2-normalised) code vectors for ``"vq"``; ignored for ``"fsq"``.
        num_codebooks: codebooks per frame; ``> 1`` stacks them residually (ResidualVQ / ResidualFSQ).
        commitment_weight: weight of the commitment loss (``"vq"`` only).
        ema_decay: EMA decay of the codebook (``"vq"`` only).
        dead_code_threshold: codes whose EMA usage falls below this are replaced by batch vectors (``"vq"``).
        fsq_levels: quantisation levels per dimension (``"fsq"`` only), e.g. ``[8, 5, 5, 5]`` -> 1000 codes.
    """

    kind: Literal["vq", "fsq"] = "vq"
    codebook_size: int = 1024
    codebook_dim: int = 8
    num_codebooks: int = 1
    commitment_weight: float = 0.25
    ema_decay: float = 0.95
    dead_code_threshold: float = 2.0
    fsq_levels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("vq", "fsq"):
            raise InvalidArgumentError(f"quantizer.kind={self.kind!r} must be 'vq' or 'fsq'")
        for key in ("codebook_size", "codebook_dim", "num_codebooks"):
            if getattr(self, key) < 1:
                raise InvalidArgumentError(f"quantizer.{key}={getattr(self, key)} must be >= 1")
        if not 0.0 < self.ema_decay < 1.0:
            raise InvalidArgumentError(f"quantizer.ema_decay={self.ema_decay} must be in (0, 1)")
        if self.kind == "fsq" and math.prod(self.fsq_levels or [0]) != self.codebook_size:
            raise InvalidArgumentError(
                f"quantizer.fsq_levels={self.fsq_levels} must multiply to quantizer.codebook_size={self.codebook_size}")


@dataclass
class QuantizedResult:
    """Output of :meth:`Quantizer.forward` (fields never change with settings).

    Attributes:
        quantized: ``(B, N, D)`` quantised vectors, with straight-through gradients to the input.
        codes: ``(B, N, K)`` long codes in ``[0, codebook_size)``.
        loss: scalar auxiliary loss (commitment; zero for FSQ).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor


class Quantizer(nn.Module):
    """Vectors ``(B, N, dim)`` <-> codes ``(B, N, num_codebooks)``.

    Example:
        >>> q = Quantizer(16, QuantizerConfig(codebook_size=64))
        >>> q(torch.randn(2, 10, 16)).codes.shape
        torch.Size([2, 10, 1])
    """

    def __init__(self, dim: int, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        self.impl = _build(dim, config)

    def forward(self, vectors: torch.Tensor) -> QuantizedResult:
        """Quantise ``(B, N, dim)`` vectors (EMA codebook updates happen in training mode only)."""
        if self.config.kind == "fsq":
            quantized, codes = self.impl(vectors)
            loss = vectors.new_zeros(())
        else:
            quantized, codes, loss = self.impl(vectors)
            loss = loss.sum()
        codes = codes.reshape(vectors.shape[0], vectors.shape[1], self.config.num_codebooks)
        return QuantizedResult(quantized=quantized, codes=codes.long(), loss=loss)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, N, K)`` -> quantised vectors ``(B, N, dim)`` (the decoder's input)."""
        if self.config.num_codebooks > 1:
            return self.impl.get_output_from_indices(codes)
        codes = codes[..., 0]
        if self.config.kind == "fsq":
            return self.impl.indices_to_codes(codes)
        return self.impl.get_output_from_indices(codes)


def _build(dim: int, config: QuantizerConfig) -> nn.Module:
    if config.kind == "fsq":
        if config.num_codebooks > 1:
            return ResidualFSQ(levels=list(config.fsq_levels), num_quantizers=config.num_codebooks, dim=dim)
        return FSQ(levels=list(config.fsq_levels), dim=dim)
    vq_kwargs = {
        "dim": dim, "codebook_size": config.codebook_size, "codebook_dim": config.codebook_dim,
        "use_cosine_sim": True, "decay": config.ema_decay, "kmeans_init": True,
        "threshold_ema_dead_code": config.dead_code_threshold, "commitment_weight": config.commitment_weight}
    if config.num_codebooks > 1:
        return ResidualVQ(num_quantizers=config.num_codebooks, **vq_kwargs)
    return VectorQuantize(**vq_kwargs)


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """Fraction of codes used and perplexity of the code histogram, from any tensor of local codes."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())
