"""Typed configs: YAML or dicts validated into dataclasses.

Every config in rankstack (world, schema, trainer, models) is a `@dataclass`. `from_dict` builds one from a
plain mapping and checks it on the way: an unknown key, a missing required key or a value of the wrong type is a
`ConfigError` that names the key by its dotted path (`trainer.lr_dense`) and the file it came from.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from rankstack.errors import ConfigError

T = TypeVar("T")
#: A number in scientific notation without a dot (`1e-3`), which YAML 1.1 leaves as a string.
SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    def fail(expected: str | None = None) -> ConfigError:
        got = f"{type(value).__name__} {value!r}" if not isinstance(value, Mapping) else "a mapping"
        return ConfigError(f"{where}: key `{key}` must be {expected or _type_name(tp)}, got {got}.")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise fail()
    if origin is Literal:
        if value not in get_args(tp):
            raise fail(f"one of {', '.join(repr(a) for a in get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail(f"a mapping for {tp.__name__}")
        return from_dict(tp, value, where=where, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise fail(f"a list of {len(args)} items")
            return tuple(_convert(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail()
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _convert(k, key_tp, f"{key}.<key>", where): _convert(v, val_tp, f"{key}.{k}", where)
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp is float:
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads `1e-3`, without a dot, as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types by their dotted path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}.")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key `{prefix}{unknown[0]}`; valid keys here are: {', '.join(sorted(fields))}."
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required key `{prefix}{name}` is missing.")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        # __post_init__ checks raise ValueError with a sentence of their own.
        raise ConfigError(f"{where}: {err}") from None


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config (dataclasses become dicts, tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning a syntax error into a `ConfigError` that names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path.")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None


def load_yaml(cls: type[T], path: str | Path, overrides: Mapping[str, Any] | None = None) -> T:
    """Load a YAML file into dataclass `cls`; `overrides` maps dotted keys to values (`trainer.epochs: 2`)."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return from_dict(cls, data, where=str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data['a']['b'] = value` for `dotted = 'a.b'`, creating mappings on the way."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override `{dotted}`: `{part}` is not a mapping in the config.")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line override `key.path=value`; the value is read as YAML (`3`, `0.1`, `true`, `[1,2]`)."""
    if "=" not in text:
        raise ConfigError(f"override `{text}` must look like key.path=value.")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def dump_yaml(obj: Any, path: str | Path) -> None:
    """Write a config (dataclass or plain data) as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


__all__ = [
    "from_dict",
    "to_dict",
    "read_yaml",
    "load_yaml",
    "dump_yaml",
    "set_dotted",
    "parse_override",
]
