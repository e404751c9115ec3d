"""What a directory written by ``AnyGen.save_pretrained`` holds, and what it must pass before anything is built.

    config.json        {"format": "anygen", "version": 1, "core": <a transformers causal-LM config>,
                        "core_class"?: <an allow-listed class, anygen.core>,
                        "vocab": {"text_size", "pad_to", "modalities", "appended"?, "reserved"?},
                        "tokenizers": {modality: {"class", "path"}}, "text_tokenizer": <path>, "adapters"?: [...]}
    model.safetensors  the core's weights (tied duplicates stored once)

Loading checks ``config.json`` against the schema below (required sections, JSON types, unknown keys, paths that
stay inside the directory), then checks the weights against a core built on the meta device (no memory, no
random init): only a config whose every key, shape and dtype matches the file gets a real core. Every failure is a
:class:`CheckpointError` naming the file and the key. The ``core`` section is transformers' own config: its keys
are type-checked against the defaults of its ``model_type``, and unknown keys are left to transformers (configs
gain and lose keys across transformers versions). ``core_class`` (absent in older files: transformers' causal-LM
class of the ``model_type``) must be on :mod:`anygen.core`'s allow-list for that ``model_type``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from anygen.core import AUTO_CORE, core_builder, core_from_config
from anygen.errors import AnygenError, CheckpointError
from anygen.tokenizers.weights import check_tensors
from anygen.vocab import Vocab

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ADAPTERS = "adapters.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# key -> (JSON type, required). float accepts ints; int and float never accept booleans.
_TOP = {"format": (str, True), "version": (int, True), "core": (dict, True), "core_class": (str, False),
        "vocab": (dict, True), "tokenizers": (dict, True), "text_tokenizer": (str, True), "adapters": (list, False)}
_VOCAB = {"text_size": (int, True), "pad_to": (int, False), "modalities": (list, True), "appended": (list, False),
          "reserved": (list, False)}
_TOKENIZER = {"class": (str, True), "path": (str, True)}
_ADAPTER = {"first_id": (int, True), "end_id": (int, True), "rank": (int, False), "alpha": (float, False),
            "targets": (list, False)}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "a list"}


# ---- config.json ------------------------------------------------------------------------------------------------
def read_config(directory: Path) -> dict[str, Any]:
    """``directory/config.json``, checked against the schema; raises :class:`CheckpointError` naming file and key."""
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not (directory / WEIGHTS).is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (f" It holds pickle weights {pickles}, which anygen never loads (they can run code): convert them "
                "once in a trusted environment with safetensors.torch.save_file(torch.load(f, weights_only=True), "
                f"'{WEIGHTS}').") if pickles else ""
        if not hint and not (directory / CONFIG).is_file():
            raise CheckpointError(f"{directory} is not an anygen model folder: it has neither {CONFIG} nor {WEIGHTS} "
                                  "(name a folder written by AnyGen.save_pretrained or `anygen train`, or "
                                  "'anygen-tiny' for the shipped model)")
        raise CheckpointError(f"{directory / WEIGHTS} not found.{hint}")
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    check_config(config, path)
    return config


def check_config(config: Any, source: Path) -> None:
    """Raise :class:`CheckpointError` unless ``config`` is a well-formed anygen v1 ``config.json``."""
    _check_object(config, _TOP, "", source)
    if config["format"] != "anygen" or config["version"] != FORMAT_VERSION:
        raise CheckpointError(f"{source} is not an anygen v{FORMAT_VERSION} config (format={config['format']!r}, "
                              f"version={config['version']!r})")
    _check_vocab(config["vocab"], source)
    for name, entry in config["tokenizers"].items():
        _check_object(entry, _TOKENIZER, f"tokenizers.{name}", source)
        inside(source.parent, entry["path"], f"tokenizers.{name}.path", source)
    inside(source.parent, config["text_tokenizer"], "text_tokenizer", source)
    for i, spec in enumerate(config.get("adapters", [])):
        _check_object(spec, _ADAPTER, f"adapters[{i}]", source)
        for j, target in enumerate(spec.get("targets", [])):
            _check_type(target, str, f"adapters[{i}].targets[{j}]", source)
    _check_core(config["core"], config.get("core_class", AUTO_CORE), source)


def inside(directory: Path, relative: str, key: str, source: Path) -> Path:
    """``directory / relative`` for a relative path that cannot leave ``directory`` (no ``..``, not absolute)."""
    windows = PureWindowsPath(relative)  # splits on both "/" and "\\"
    if not relative or PurePosixPath(relative).is_absolute() or windows.anchor or ".." in windows.parts:
        raise CheckpointError(f"{source}: {key}={relative!r} must be a relative path inside the model directory "
                              "(no '..', not absolute)")
    return directory / relative


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding an anygen ``config.json`` (what ``save_pretrained`` may replace)."""
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and config.get("format") == "anygen"


def read_vocab(data: Mapping[str, Any], rows: int, source: Path) -> Vocab:
    """The :class:`Vocab` of a checked ``vocab`` section, refused unless it fits the core's ``rows`` embeddings."""
    specs = [*data["modalities"], *data.get("appended", [])]
    needed = data["text_size"] + sum(size * count for _, size, count in specs)  # a lower bound, cheap to compute
    if needed <= rows:
        try:
            vocab = Vocab.from_dict(dict(data))
        except CheckpointError as err:
            raise CheckpointError(f"{source}: {err}") from err
        needed = vocab.size
    if needed > rows:
        raise CheckpointError(f"{source}: the vocab section lays out {needed} ids but the core has {rows} "
                              "embedding rows")
    return vocab


def _check_vocab(vocab: Any, source: Path) -> None:
    _check_object(vocab, _VOCAB, "vocab", source)
    for key in ("text_size", "pad_to"):
        if vocab.get(key, 1) < 1:
            raise CheckpointError(f"{source}: vocab.{key}={vocab[key]} must be >= 1")
    for section in ("modalities", "appended"):
        for i, spec in enumerate(vocab.get(section, [])):
            where = f"vocab.{section}[{i}]"
            if not (isinstance(spec, list) and len(spec) == 3):
                raise CheckpointError(f"{source}: {where} must be [name, codebook_size, num_codebooks], got "
                                      f"{_short(spec)}")
            _check_type(spec[0], str, f"{where}[0] (name)", source)
            for j, what in ((1, "codebook_size"), (2, "num_codebooks")):
                _check_type(spec[j], int, f"{where}[{j}] ({what})", source)
                if spec[j] < 1:
                    raise CheckpointError(f"{source}: {where}[{j}] ({what})={spec[j]} must be >= 1")
    for i, pair in enumerate(vocab.get("reserved", [])):
        ok = isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair)
        if not ok or not 0 <= pair[0] < pair[1] <= vocab["text_size"]:
            raise CheckpointError(f"{source}: vocab.reserved[{i}]={_short(pair)} must be [start, stop] with "
                                  f"0 <= start < stop <= vocab.text_size={vocab['text_size']}")


def _check_core(core: dict[str, Any], core_class: str, source: Path) -> None:
    from transformers import AutoConfig

    model_type = core.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{source}: core.model_type={model_type!r} must name a transformers model type "
                              "(e.g. 'llama', 'qwen2', 'gemma')")
    try:
        core_builder(core_class, model_type)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from err
    try:
        defaults = AutoConfig.for_model(model_type).to_dict()
    except Exception:  # a config class that needs arguments: its values are left to transformers
        return
    for key, value in core.items():
        default = defaults.get(key)
        if value is not None and type(default) in _TYPE_NAMES:
            _check_type(value, type(default), f"core.{key}", source)


def _check_object(value: Any, schema: Mapping[str, tuple[type, bool]], where: str, source: Path) -> None:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: {where or 'the top level'} must be a JSON object, got "
                              f"{type(value).__name__} {_short(value)}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise CheckpointError(f"{source}: unknown key {_join(where, unknown[0])!r} (known: {sorted(schema)})")
    for key, (kind, required) in schema.items():
        if key in value:
            _check_type(value[key], kind, _join(where, key), source)
        elif required:
            raise CheckpointError(f"{source}: missing key {_join(where, key)!r}")


def _check_type(value: Any, kind: type, key: str, source: Path) -> None:
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise CheckpointError(f"{source}: {key} must be {_TYPE_NAMES[kind]}, got {type(value).__name__} "
                              f"{_short(value)}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


# ---- weights --------------------------------------------------------------------------------------------------
def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, truncated or malformed file raises :class:`CheckpointError`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path}: {err} (truncated or not a safetensors file?)") from err


def core_skeleton(core: dict[str, Any], weights: Mapping[str, torch.Tensor], path: Path,
                  attn_implementation: str, core_class: str = AUTO_CORE) -> nn.Module:
    """The core ``config.json`` describes, built on the meta device (no memory) and checked against ``weights``
    (read from ``path``): same keys, shapes and loadable dtypes. Call it before :func:`load_core`."""
    layers = {k: v for k, v in core.items() if "layers" in k and isinstance(v, int) and v > len(weights)}
    if layers:  # every layer holds at least one tensor; a bigger count would only make the meta build slow
        key, value = next(iter(layers.items()))
        raise CheckpointError(f"{path.parent / CONFIG}: core.{key}={value} but {path} holds only {len(weights)} "
                              "tensors")
    with torch.device("meta"):
        skeleton = _build_core(core, attn_implementation, core_class, path.parent / CONFIG)
    check_tensors(unique_tensors(skeleton), weights, path)
    return skeleton


def load_core(core: dict[str, Any], weights: Mapping[str, torch.Tensor], path: Path,
              attn_implementation: str, core_class: str = AUTO_CORE) -> nn.Module:
    """The real core, holding ``weights``; ``core`` and ``weights`` must have passed :func:`core_skeleton`. Its
    tensors are allocated without the random initialisation every one of them would lose to ``weights`` (minutes
    for a 7B core)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = _build_core(core, attn_implementation, core_class, path.parent / CONFIG)
    model.tie_weights()  # skipped with the initialisation
    copy_weights(model, weights)
    return model


def load_weights(module: nn.Module, path: Path) -> None:
    """Fill ``module`` from the safetensors file ``path``: same keys, shapes and compatible dtypes, or nothing."""
    weights = read_weights(path)
    check_tensors(unique_tensors(module), weights, path)
    copy_weights(module, weights)


def copy_weights(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in unique_tensors(module).items():
            tensor.copy_(weights[key])


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype | None, what: str) -> None:
    """Write ``tensors`` as safetensors (floating ones cast to ``dtype``), refusing non-finite values."""
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise CheckpointError(f"refusing to save non-finite {what}")
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))


def unique_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied parameters (one object under two names) stored once; the first name wins."""
    seen: set[int] = set()
    out = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor.detach()
    return out


def _build_core(core: dict[str, Any], attn_implementation: str, core_class: str, source: Path) -> nn.Module:
    try:
        return core_from_config(dict(core), attn_implementation, core_class)
    except AnygenError:
        raise
    except Exception as err:  # transformers' config classes and modules raise any type on values they cannot use
        raise CheckpointError(f"{source}: cannot build a {core_class} core of model_type {core['model_type']!r} "
                              f"from 'core': {type(err).__name__}: {err}") from err
