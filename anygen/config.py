"""The one strict config loader: YAML files are data, dataclasses are the schema.

``load_config(MyConfig, "configs/x.yaml", overrides=["train.lr=3e-4"])`` reads the YAML, applies ``--set``-style
overrides, and builds the (possibly nested) dataclass. Unknown keys, wrong types and malformed overrides raise
:class:`~anygen.errors.InvalidArgumentError` naming the key. No interpolation, no ``_target_``, no code execution.

Paths: a string value ``pkg://anygen-tiny/...`` names a file shipped inside the package (:mod:`anygen.assets`) and
becomes its absolute path, so configs mean the same files from every working directory; other relative paths are
relative to the working directory (outputs go under ``./runs`` by convention).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from anygen.assets import PACKAGE_PREFIX, resolve_path
from anygen.errors import AnygenError, InvalidArgumentError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a YAML file (optional) plus ``key.sub=value`` overrides."""
    return from_dict(cls, read_config(path, overrides))


def read_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping of a YAML file (optional) with ``key.sub=value`` overrides applied, before any dataclass."""
    raw = {} if path is None else read_yaml(path)
    for item in overrides or []:
        _apply_override(raw, item)
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path``; one clear error when the file is missing, unreadable or not data."""
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a YAML file" if file.is_dir() else "does not exist"
        raise InvalidArgumentError(f"config file {str(path)!r} {what}")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:  # includes tags like !!python/object, which safe_load refuses
        raise InvalidArgumentError(f"config file {path} is not plain YAML data: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(f"config file {str(path)!r} cannot be read as UTF-8 text: {err}") from err
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"config file {path} must hold a mapping at the top level")
    return raw


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Recursively build dataclass ``cls`` from ``data``; raises on unknown keys and type mismatches."""
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgumentError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) that ``from_dict`` reads back."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(obj))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise InvalidArgumentError(f"override {item!r} must look like key.sub=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidArgumentError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if isinstance(value, str):
        value = _shipped(value, key)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except InvalidArgumentError:
                continue
        raise InvalidArgumentError(f"{key}={value!r} matches none of {hint}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InvalidArgumentError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"{key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise InvalidArgumentError(f"{key}={value!r} must be one of {list(args)}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise InvalidArgumentError(f"{key}={value!r} must be of type {hint.__name__}")
    return value


def _shipped(value: str, key: str) -> str:
    """``pkg://...`` -> the absolute path of that file inside the package; other strings unchanged."""
    if not value.startswith(PACKAGE_PREFIX):
        return value
    try:
        return resolve_path(value)
    except AnygenError as err:
        raise InvalidArgumentError(f"{key}: {err}") from err
