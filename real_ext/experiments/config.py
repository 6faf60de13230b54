"""Typed configs from YAML: dataclasses filled from nested dicts, with dotted
command-line overrides (``actor.optimizer.lr=1e-5``), type checks, and
"did you mean" for unknown keys. Errors name the dotted path of the field.

Field types understood: bool, int, float (ints accepted), str, Optional[X],
tuple[X, ...], list[X], dict[str, X], Literal[...] and nested dataclasses.
A dataclass's own ``__post_init__`` checks values; its ValueError is reported
under the dataclass's path.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing

import yaml


class ConfigError(ValueError):
    """A config that cannot run, named by the dotted path of the field."""


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _same_shape(tp, value) -> bool:
    """Whether ``value`` has the container shape of type ``tp`` (mapping, list)."""
    origin = typing.get_origin(tp) or tp
    if isinstance(value, dict):
        return origin is dict or dataclasses.is_dataclass(tp)
    if isinstance(value, (list, tuple)):
        return origin in (list, tuple)
    return False


def convert(tp, value, path: str):
    """``value`` (from YAML) as type ``tp``, or ConfigError naming ``path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return convert(a, value, path)
            except ConfigError as e:
                errors.append(e)
        # The alternative of the value's own shape (a mapping for a section) says best what is wrong.
        shaped = [e for a, e in zip(inner, errors) if _same_shape(a, value)]
        if len(errors) == 1 or len(shaped) == 1:
            raise (shaped or errors)[0]
        raise ConfigError(f"{path}: {value!r} is none of {', '.join(_type_name(a) for a in inner)}")
    if tp is typing.Any:
        return value
    if tp in (dict, list):   # untyped sections, checked where they are used
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected a {'mapping' if tp is dict else 'list'}, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}{did_you_mean(str(value), map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else typing.Any
        items = [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): convert(args[1] if args else typing.Any, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads "1e-5" (no dot) as a string: accept numeric strings.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{path}: config fields of type {tp} are not supported")


def from_dict(cls, data, path: str = ""):
    """An instance of dataclass ``cls`` from a dict (unknown keys and missing
    required fields are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(path, key)}: unknown key{did_you_mean(str(key), fields)} "
                              f"(known here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required field missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def to_dict(obj):
    """Plain YAML-able data (tuples as lists) of a dataclass instance."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides) -> dict:
    """``data`` with each ``a.b.c=value`` set (value parsed as YAML); paths
    may create new sections, which the typed load then checks."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. actor.optimizer.lr=1e-5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty part in key {key!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = data
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is {child!r}, not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of fields at the top, got {type(data).__name__}")
    return data


def dump_yaml(data: dict, path: str) -> None:
    import os
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
