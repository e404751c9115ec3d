"""Janus' core for anygen: its Llama language model plus the separate image-generation embeddings and head.

Janus (and Janus-Pro) reads image codes through their own small embedding and MLP (``generation_embeddings``,
``generation_aligner``) and predicts them with a non-linear head (``generation_head``), not with rows of its text
embedding and ``lm_head``. :class:`JanusCore` is a ``LlamaForCausalLM`` over anygen's ids that routes the ids of
the image span through those modules, so it meets the core contract of :mod:`anygen.core` (config, input
embeddings, forward with a KV cache and ``logits_to_keep``) and ``generate`` runs it unchanged:

    input id in [image_start, image_stop)   generation_aligner(generation_embeddings(id - image_start))
    any other id                            the language model's embedding row
    logits over the image span              generation_head(hidden)
    logits over every other id              lm_head(hidden)

The embedding and ``lm_head`` rows of the image span are zero placeholders (never read), kept so that the matrices
cover every id and an appended modality (``anygen extend``) grows them like any core's. The generation modules'
shapes live in the config under ``janus_generation`` (saved in ``config.json``'s ``core`` section).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAEAlignerMLP, JanusVQVAEHead

from anygen.errors import CheckpointError

GENERATION_KEYS = ("num_embeddings", "embed_dim", "projection_dim", "num_hidden_layers", "hidden_act",
                   "image_token_embed_dim")


def generation_settings(vq_config: JanusVQVAEConfig, image_start: int) -> dict[str, Any]:
    """What ``config.janus_generation`` holds: the generation modules' shapes and the first image id."""
    return {**{key: getattr(vq_config, key) for key in GENERATION_KEYS}, "image_start": image_start}


class JanusCore(LlamaForCausalLM):
    """A ``LlamaForCausalLM`` whose image-span ids go through Janus' generation embeddings and head.

    Args:
        config: the language model's ``LlamaConfig`` (``vocab_size`` = the anygen vocab's size) with a
            ``janus_generation`` dict (:func:`generation_settings`).
    """

    def __init__(self, config: LlamaConfig) -> None:
        settings = getattr(config, "janus_generation", None)
        if not isinstance(settings, dict) or set(settings) != {*GENERATION_KEYS, "image_start"}:
            raise CheckpointError(f"a JanusCore config needs janus_generation with keys "
                                  f"{sorted({*GENERATION_KEYS, 'image_start'})}, got {settings!r}")
        super().__init__(config)
        vq = JanusVQVAEConfig(**{key: settings[key] for key in GENERATION_KEYS})
        self.image_start = int(settings["image_start"])
        self.image_stop = self.image_start + vq.num_embeddings
        if not 0 <= self.image_start < self.image_stop <= config.vocab_size:
            raise CheckpointError(f"janus_generation: image ids [{self.image_start}, {self.image_stop}) lie outside "
                                  f"the vocab of {config.vocab_size}")
        self.generation_embeddings = nn.Embedding(vq.num_embeddings, vq.embed_dim)
        self.generation_aligner = JanusVQVAEAlignerMLP(vq)
        self.generation_head = JanusVQVAEHead(vq)
        self.post_init()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` anygen ids -> ``(B, T, hidden)`` input embeddings (image codes through the aligner)."""
        image = (input_ids >= self.image_start) & (input_ids < self.image_stop)  # (B, T)
        text = self.model.embed_tokens(input_ids)
        codes = (input_ids - self.image_start).clamp(0, self.image_stop - self.image_start - 1)
        generated = self.generation_aligner(self.generation_embeddings(codes)).to(text.dtype)
        return torch.where(image[..., None], generated, text)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Next-token logits ``(B, T', V)`` over anygen's ids (``T'``: the last ``logits_to_keep`` positions)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state  # (B, T, H)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden = hidden[:, keep]
        logits = self.lm_head(hidden)  # (B, T', V); the image span's rows are placeholders, replaced here
        image = self.generation_head(hidden).to(logits.dtype)  # (B, T', codes)
        logits = torch.cat([logits[..., : self.image_start], image, logits[..., self.image_stop:]], dim=-1)
        return CausalLMOutputWithPast(logits=logits, cache=out.cache)
