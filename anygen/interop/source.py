"""Reading a local transformers checkpoint directory of a public model: config, weights, tokenizer, image settings.

Nothing here downloads (``local_files_only=True``) or runs a checkpoint's own code; weights come from safetensors
files only, and a checkpoint missing any weight its class needs is refused (transformers would otherwise fill the
gap with random values and only log a warning).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anygen.core import core_from_config
from anygen.errors import CheckpointError
from anygen.interop.id_map import IdMap
from anygen.tokenizers.text import TextTokenizer

PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# transformers' image processors' default normalisation (Janus, Emu3), used when a source has no preprocessor_config
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MATRICES = ("model.embed_tokens.weight", "lm_head.weight")  # the converted core's rows laid out by an IdMap


def read_source_config(directory: str | Path, model_type: str) -> dict[str, Any]:
    """``directory/config.json``, refused unless it describes a ``model_type`` checkpoint."""
    directory = Path(directory)
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read a transformers config ({err}); the source must be a local "
                              "checkpoint directory (save_pretrained output), nothing is downloaded") from err
    if not isinstance(config, dict) or config.get("model_type") != model_type:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: model_type={found!r}, but this converter reads {model_type!r} checkpoints")
    if not sorted(directory.glob("*.safetensors")):
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLES)
        hint = f" (it holds pickle files {pickles}, which anygen never loads)" if pickles else ""
        raise CheckpointError(f"{directory} holds no .safetensors weights{hint}")
    return config


def load_reference(directory: str | Path, model_class: type, dtype: torch.dtype | None = None) -> nn.Module:
    """The source model as transformers loads it (safetensors only, local only), in eval mode.

    Raises:
        CheckpointError: the files cannot be loaded, or a weight the class needs is missing from them.
    """
    try:
        model, info = model_class.from_pretrained(directory, local_files_only=True, use_safetensors=True,
                                                  dtype=dtype if dtype is not None else "auto",
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot load {model_class.__name__} from {directory}: {err}") from err
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise CheckpointError(f"{directory}: {len(missing)} weight(s) of {model_class.__name__} are missing from the "
                              f"checkpoint, e.g. {missing[:3]}; a converted model would hold random values there")
    return model.eval()


def read_text_tokenizer(directory: str | Path) -> TextTokenizer:
    """The source's ``tokenizer.json`` (its ids are the converted model's text ids)."""
    if not (Path(directory) / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory} has no tokenizer.json; the converted model needs the source's text "
                              "tokenizer (save it there with the source's tokenizer.save_pretrained)")
    return TextTokenizer.from_pretrained(directory)


def token_id(text: TextTokenizer, token: str, directory: str | Path) -> int:
    """The id of ``token`` in the source's tokenizer, or a :class:`CheckpointError` naming it."""
    found = text.backend.token_to_id(token)
    if found is None:
        raise CheckpointError(f"{directory}/tokenizer.json has no token {token!r}, which the converter needs")
    return int(found)


def read_normalization(directory: str | Path, mean: Sequence[float],
                       std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean`` / ``image_std`` of the source's ``preprocessor_config.json`` (else the given defaults)."""
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        return tuple(mean), tuple(std)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return (tuple(float(x) for x in data.get("image_mean", mean)),
                tuple(float(x) for x in data.get("image_std", std)))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot read image_mean / image_std from {path}: {err}") from err


def reference_tensors(model: nn.Module, rename: Callable[[str], str | None]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (non-persistent buffers too, e.g. rotary frequencies) under the name
    ``rename`` gives it; names it maps to ``None`` are left out."""
    named = {**dict(model.named_buffers()), **model.state_dict()}
    out = {}
    for key, tensor in named.items():
        new = rename(key)
        if new is not None:
            out[new] = tensor
    return out


def with_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str | Path) -> nn.Module:
    """``model`` (built on the meta device) holding ``tensors`` themselves, no copy: every state-dict key and every
    buffer must be given, with its shape, and nothing else."""
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own) - set(buffers))
    if missing or unexpected:
        raise CheckpointError(f"{source}: cannot map the checkpoint onto the converted core: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for key, tensor in own.items():
        if tensors[key].shape != tensor.shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, the converted core "
                                  f"expects {tuple(tensor.shape)}")
    model.load_state_dict({k: tensors[k] for k in own}, assign=True)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:  # non-persistent buffers are not in the state dict
            if name not in tensors:
                raise CheckpointError(f"{source}: no value for the converted core's buffer {name}")
            owner, _, attribute = name.rpartition(".")
            model.get_submodule(owner)._buffers[attribute] = tensors[name]
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def converted_core(reference: nn.Module, config: dict[str, Any], core_class: str, rename: Callable[[str], str | None],
                   ids: IdMap, source: str | Path, attn_implementation: str) -> nn.Module:
    """The ``core_class`` core of ``config`` (built on the meta device) holding the reference's tensors under the
    names ``rename`` gives them, its embedding and output matrices laid out by ``ids`` (the only new tensors)."""
    with torch.device("meta"):
        core = core_from_config(config, attn_implementation, core_class)
    state = reference_tensors(reference, rename)
    for key in MATRICES:
        state[key] = ids.take(state[key])
    return with_state(core, state, source)
