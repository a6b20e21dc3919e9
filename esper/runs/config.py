"""Settings as plain data: nested dataclasses to and from dicts and YAML, with strict keys.

A config file holds only the keys it wants to change; anything else keeps its default.
An unknown key is an error that names the key and the known ones, so a typo never
silently does nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts and lists, ready for YAML or torch.save."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, default: Any, annotation: str, where: str) -> Any:
    """Make a YAML or command-line value the type the field expects (YAML reads 1e-3 as a string)."""
    if value is None:
        return None
    wants_float = isinstance(default, float) or (default is None and "float" in annotation)
    wants_int = (isinstance(default, int) and not isinstance(default, bool)) or (default is None and "int" in annotation)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError
            return bool(value)
        if wants_float and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if wants_int and isinstance(value, str):
            return int(value)
    except ValueError:
        raise ValueError(
            f"setting '{where}' = {value!r} is not a {type(default).__name__ if default is not None else annotation}"
        ) from None
    return value


def from_dict(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass `cls` from a (partial) dict, recursing into dataclass-valued fields."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ValueError(f"settings {where or 'file'} must be a mapping, got {type(data).__name__}")
    defaults = cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; known here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"setting '{path}' must be a mapping")
            merged = {**to_dict(default), **value}
            kwargs[name] = from_dict(type(default), merged, path)
        elif isinstance(default, dict) and isinstance(value, dict):
            kwargs[name] = {**default, **value}  # e.g. per-head coefficients: name only the heads to change
        else:
            kwargs[name] = _coerce(value, default, str(fields[name].type), path)
    return cls(**kwargs)


def with_overrides(obj: Any, overrides: dict[str, Any]) -> Any:
    """A copy of dataclass `obj` with dotted keys replaced, e.g. {"env.epochs": 3}."""
    data = to_dict(obj)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown setting '{key}'")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"unknown setting '{key}'")
        node[parts[-1]] = value
    return from_dict(type(obj), data)


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dataclasses (or their dicts)."""
    a, b = to_dict(a), to_dict(b)
    keys = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict) and key not in ("entropy_coef", "entropy_floor"):
            keys += diff(a[key], b[key], path + ".")
        elif a.get(key) != b.get(key):
            keys.append(path)
    return keys


def load_yaml(cls: type, path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return from_dict(cls, data)


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
