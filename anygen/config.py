"""The one strict config loader: YAML files are data, dataclasses are the schema.

``load_config(MyConfig, "configs/x.yaml", overrides=["train.lr=3e-4"])`` reads the YAML, applies ``--set``-style
overrides, and builds the (possibly nested) dataclass. Unknown keys, wrong types and malformed overrides raise
:class:`~anygen.errors.InvalidArgumentError` naming the key. No interpolation, no ``_target_``, no code execution.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from anygen.errors import InvalidArgumentError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a YAML file (optional) plus ``key.sub=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:  # includes tags like !!python/object, which safe_load refuses
            raise InvalidArgumentError(f"config file {path} is not plain YAML data: {err}") from err
        if not isinstance(raw, dict):
            raise InvalidArgumentError(f"config file {path} must hold a mapping at the top level")
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(cls, raw)


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
