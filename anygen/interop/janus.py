"""Janus / Janus-Pro (transformers ``JanusForConditionalGeneration``) as an anygen model, for text-to-image.

The core is :class:`~anygen.interop.janus_core.JanusCore`: Janus' Llama language model with its text rows laid out
in anygen's ids (:mod:`anygen.interop.id_map`; ``<|image|>`` / ``<|/image|>`` copy ``<begin_of_image>`` /
``<end_of_image>``) and the image span served by Janus' own generation embeddings and head. Pixels come from
Janus' VQ-VAE (:class:`~anygen.interop.janus_vq.JanusImageTokenizer`).

What this covers of Janus: text-to-image (and text). Janus *understands* images through a separate SigLIP encoder
whose continuous features fill ``<image_placeholder>`` positions; anygen feeds images to a core as codes, so that
encoder is not carried over, and images in a converted Janus model's prompts are read through the generation
embeddings, which Janus was not trained to understand (captions from it are not meaningful).

Example:
    >>> model = from_janus("Janus-Pro-1B")              # doctest: +SKIP
    >>> model.save_pretrained("janus-pro-1b-anygen")    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import JanusForConditionalGeneration

from anygen.interop.id_map import IdMap
from anygen.interop.janus_core import generation_settings
from anygen.interop.janus_vq import JanusImageTokenizer
from anygen.interop.source import (CLIP_MEAN, CLIP_STD, converted_core, load_reference, read_normalization,
                                   read_source_config, read_text_tokenizer, token_id)
from anygen.model import AnyGen
from anygen.tokenizers.text import TextTokenizer

CORE_CLASS = "JanusCore"
TOKENS = {"<|pad|>": "<｜▁pad▁｜>", "<|bos|>": "<｜begin▁of▁sentence｜>", "<|eos|>": "<｜end▁of▁sentence｜>",
          "<|image|>": "<begin_of_image>", "<|/image|>": "<end_of_image>"}
RENAMES = (("model.language_model.", "model."), ("model.generation_", "generation_"), ("lm_head.", "lm_head."))


def from_janus(directory: str | Path, *, dtype: torch.dtype | None = None,
               attn_implementation: str = "sdpa") -> AnyGen:
    """An :class:`~anygen.model.AnyGen` from a local transformers Janus / Janus-Pro checkpoint directory.

    Args:
        directory: ``save_pretrained`` output of ``JanusForConditionalGeneration`` with its ``tokenizer.json``
            (and ``preprocessor_config.json`` for the image mean / std, else the processor's defaults).
        dtype: the core's dtype (default: the checkpoint's).

    Raises:
        CheckpointError: not a Janus checkpoint, a weight missing (the VQ-VAE decoder included) or a special token
            missing from the tokenizer.
    """
    read_source_config(directory, "janus")
    text = read_text_tokenizer(directory)
    reference = load_reference(directory, JanusForConditionalGeneration, dtype)
    ids = _id_map(reference, text, directory)
    mean, std = read_normalization(directory, CLIP_MEAN, CLIP_STD)
    tokenizer = JanusImageTokenizer(reference.model.vqmodel, mean, std)
    core = _core(reference, ids, directory, attn_implementation)
    return AnyGen(core, ids.vocab, text, {"image": tokenizer}).eval()


def _id_map(reference: JanusForConditionalGeneration, text: TextTokenizer, directory: str | Path) -> IdMap:
    config = reference.config.text_config
    fallback = {"<|pad|>": config.pad_token_id, "<|bos|>": config.bos_token_id, "<|eos|>": config.eos_token_id}
    specials = {}
    for name, token in TOKENS.items():
        found = text.backend.token_to_id(token)
        specials[name] = int(found) if found is not None else fallback.get(name)
        if specials[name] is None:
            specials[name] = token_id(text, token, directory)  # raises, naming the token
    codes = int(reference.config.vq_config.num_embeddings)
    return IdMap.build(int(config.vocab_size), specials, [], specials.values(), image_codes=codes)


def _core(reference: JanusForConditionalGeneration, ids: IdMap, directory: str | Path,
          attn_implementation: str) -> torch.nn.Module:
    config = reference.config.text_config.to_dict()
    tied = reference.lm_head.weight is reference.model.language_model.embed_tokens.weight
    config.update(vocab_size=ids.vocab.size, tie_word_embeddings=tied,
                  janus_generation=generation_settings(reference.config.vq_config, ids.vocab.span("image").start))
    return converted_core(reference, config, CORE_CLASS, _rename, ids, directory, attn_implementation)


def _rename(key: str) -> str | None:
    """The JanusCore name of a ``JanusForConditionalGeneration`` tensor; ``None`` for the understanding encoder
    (SigLIP and its aligner) and the VQ-VAE, which the image tokenizer holds."""
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return None
