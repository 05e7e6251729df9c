"""Typed dataclass configs from YAML, with ``a.b=value`` command-line overrides (no Hydra).

Every recipe describes its settings as nested dataclasses (a docstring per field); the YAML file
mirrors them. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Nested dict -> ``cls`` instance; unknown keys and mistyped values raise ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}"
        )
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}".lstrip(".")
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_dataclass(type(default), value or {}, key)
        else:
            kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a value against its field type; numbers written as strings (YAML reads ``1e-3``
    as a string) and ints given for floats are converted; list items are coerced one by one."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{key}: expected one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint) or (str, str)
        return {
            coerce(k, key_type, f"{key}"): coerce(v, value_type, f"{key}.{k}")
            for k, v in value.items()
        }
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (str,)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    try:
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}") from None
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML: ``3``, ``1e-3``, ``[a, b]``, ``null``)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.path=value, e.g. optim.steps=500")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ValueError(f"override {item!r}: empty key")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_yaml_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    example: str = "",
) -> T:
    """Read a YAML config (or start from the defaults) and apply ``a.b=value`` overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: no such config file" + (f" (see {example})" if example else "")
            )
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a YAML mapping at the top level")
    return build_dataclass(cls, apply_overrides(data, list(overrides or [])), "")
