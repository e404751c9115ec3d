"""Build or load the transformers causal LM at the centre of every model, and grow its vocabulary.

We do not rewrite a transformer: the core is a stock ``transformers`` causal LM (Llama-style by default), so any
local pretrained LLM directory can be used as a starting point and every attention kernel transformers knows is
available. Attention backends: ``"sdpa"`` (PyTorch's fused kernels, the default, memory-efficient on GPU),
``"eager"``, or ``"xformers"`` (registered on demand when CUDA and the ``xformers`` extra are present).

**Which classes a core may be.** A saved model's ``config.json`` names its core's class (``core_class``) and
loading builds it only from this allow-list, never by importing a name a file gives, never with remote code:

- the causal-LM class transformers' own registry gives the config's ``model_type`` (``LlamaForCausalLM`` for
  ``"llama"``, ``Qwen2ForCausalLM`` ...);
- the classes in :data:`CORE_CLASSES`, each with the ``model_type`` its config must have: the cores of converted
  public checkpoints (:mod:`anygen.interop`).

**The core contract** (what the rest of anygen uses, so a wrapper such as
:class:`anygen.interop.janus_core.JanusCore` runs through ``generate`` unchanged):

- ``config``: a transformers config of the decoder (it sizes the KV cache: layers, KV heads, head size, and
  ``max_position_embeddings`` bounds the context); ``config.to_dict()`` is what ``config.json`` stores;
- ``get_input_embeddings()``: an ``nn.Embedding`` with at least ``vocab.size`` rows (rows of ids that the core
  embeds in another way may be placeholders), and ``resize_token_embeddings(n, mean_resizing=False)`` to grow it
  (and the output rows) for an appended modality;
- ``forward(input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, logits_to_keep=0,
  **kwargs)`` returning an object with ``.logits`` ``(B, T', V)`` over anygen's ids (``T'`` = the last
  ``logits_to_keep`` positions, 0 = all); ``cache`` is a transformers ``Cache`` (a ``StaticCache`` in generation)
  and ``cache_position`` may be passed in ``kwargs``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from anygen.errors import CheckpointError, InvalidArgumentError


@dataclass
class CoreConfig:
    """Shape of a new Llama-style core (ignored when a pretrained LLM is loaded)."""

    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                    "max_position_embeddings"):
            if getattr(self, key) <= 0:
                raise InvalidArgumentError(f"core.{key}={getattr(self, key)} must be > 0")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise InvalidArgumentError(
                f"core.hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}, "
                f"which must divide by num_kv_heads={self.num_kv_heads}")


def build_core(config: CoreConfig, vocab_size: int, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A freshly initialised ``LlamaForCausalLM`` with ``vocab_size`` rows."""
    hf_config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return core_from_config(hf_config, attn_implementation)


# core_class -> (the model_type its config must have, "module:attribute" of a builder taking that config).
CORE_CLASSES: dict[str, tuple[str, str]] = {
    "ChameleonForConditionalGeneration": ("chameleon", "anygen.interop.chameleon:build_chameleon_core"),
    "Emu3ForCausalLM": ("emu3_text_model", "transformers:Emu3ForCausalLM"),
    "JanusCore": ("llama", "anygen.interop.janus_core:JanusCore"),
}
AUTO_CORE = "AutoModelForCausalLM"  # what a config.json without ``core_class`` (older files) means


def core_from_config(hf_config: object, attn_implementation: str = "sdpa",
                     core_class: str = AUTO_CORE) -> nn.Module:
    """Instantiate an allow-listed core class from a transformers config (dict or object), randomly initialised.

    Raises:
        CheckpointError: ``core_class`` is not allowed for the config's ``model_type``.
    """
    if isinstance(hf_config, dict):
        hf_config = AutoConfig.for_model(**hf_config)
    builder = core_builder(core_class, hf_config.model_type)
    hf_config._attn_implementation = resolve_attention(attn_implementation)
    return builder(hf_config)


def core_builder(core_class: str, model_type: str) -> Callable[[object], nn.Module]:
    """The constructor of an allow-listed ``core_class`` for a config of ``model_type`` (see the module docstring)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if core_class in CORE_CLASSES:
        expected, target = CORE_CLASSES[core_class]
        if model_type != expected:
            raise CheckpointError(f"core_class={core_class!r} needs a core config of model_type={expected!r}, got "
                                  f"{model_type!r}")
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)
    auto = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if auto is not None and core_class in (AUTO_CORE, auto):
        return AutoModelForCausalLM.from_config
    if auto is None:
        raise CheckpointError(f"core.model_type={model_type!r} is not a causal-LM type transformers knows (e.g. "
                              f"'llama', 'qwen2', 'gemma'), and core_class={core_class!r} is not one of "
                              f"{sorted(CORE_CLASSES)}")
    raise CheckpointError(
        f"core_class={core_class!r} is not an allowed core for model_type={model_type!r}: anygen builds {auto} "
        f"(transformers' causal-LM class for that model_type) or one of {sorted(CORE_CLASSES)}; it never imports "
        "another class a file names")


def core_class_name(core: nn.Module) -> str:
    """The ``core_class`` to record for ``core``; raises :class:`CheckpointError` for a class loading would refuse."""
    name = type(core).__name__
    model_type = getattr(getattr(core, "config", None), "model_type", None)
    core_builder(name, str(model_type))  # refuse to save what could not be loaded
    return name


def load_pretrained_core(directory: str | Path, gguf_file: str | None = None,
                         attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a local pretrained causal LM (safetensors, or a GGUF file inside ``directory``); never downloads."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"pretrained core directory {directory} does not exist")
    try:
        return AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_file, local_files_only=True, use_safetensors=None if gguf_file else True,
            attn_implementation=resolve_attention(attn_implementation), dtype=dtype)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load a causal LM from {directory}: {err}") from err


def extend_vocab(model: PreTrainedModel, new_size: int) -> None:
    """Grow the embedding (and untied output) matrices to ``new_size`` rows; new rows = mean of the old rows.

    The mean keeps new tokens' initial logits close to the average text token, so training starts stable.
    """
    old = model.get_input_embeddings().weight
    if new_size < old.shape[0]:
        raise InvalidArgumentError(f"new vocab size {new_size} is smaller than the core's {old.shape[0]} rows")
    mean_in = old.detach().mean(0)
    out = model.get_output_embeddings()
    mean_out = None if out is None or model.config.tie_word_embeddings else out.weight.detach().mean(0)
    old_size = old.shape[0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old_size:] = mean_in
        if mean_out is not None:
            model.get_output_embeddings().weight[old_size:] = mean_out


def resolve_attention(name: str) -> str:
    """Validate an attention backend name, registering ``xformers`` with transformers when requested."""
    if name in ("sdpa", "eager", "flex_attention"):
        return name
    if name == "xformers":
        from anygen.attention import register_xformers

        return register_xformers()
    raise InvalidArgumentError(f"attn_implementation={name!r}; choose 'sdpa', 'eager' or 'xformers'")
