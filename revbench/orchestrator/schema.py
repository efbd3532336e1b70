"""Typed dataclasses from plain YAML mappings, with errors that name the bad field by its dotted path."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from typing import Any

import yaml

from revbench import units
from revbench.orchestrator import strict_yaml


class FieldError(ValueError):
    """A value that does not fit its field; `path` is the dotted name of the field, e.g. `workload.seq`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def convert(value: Any, hint: Any, path: str) -> Any:
    """`value` checked against the type `hint` (and converted where lossless: int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise FieldError(path, "must not be null")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return convert(value, option, path)
            except FieldError as exc:
                errors.append(exc.message)
        raise FieldError(path, " or ".join(errors))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise FieldError(path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(path, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):  # YAML's .nan and .inf, or a string float() reads as one
            raise FieldError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise FieldError(path, f"expected a string, got {_describe(value)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"expected a mapping, got {_describe(value)}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {convert(k, key_hint, path): convert(v, value_hint, _join(path, str(k))) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise FieldError(path, f"expected a list, got {_describe(value)}")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [convert(v, item_hint, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise FieldError(path, f"expected a list of {len(args)} values, got {_describe(value)}")
        return tuple(convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    raise TypeError(f"{path}: no conversion for type {hint!r}")  # a bug in a dataclass, not in the input


def field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build(cls: type, data: Any, path: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping; unknown keys, wrong types and the dataclass's own
    validation (`__post_init__` raising ValueError) all raise FieldError naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FieldError(path, f"expected a mapping of {cls.__name__} fields, got {_describe(data)}")
    hints = field_hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise FieldError(_join(path, str(unknown[0])), f"unknown field; the fields here are {', '.join(hints)}")
    values = {key: convert(value, hints[key], _join(path, key)) for key, value in data.items()}
    try:
        return cls(**values)
    except FieldError as exc:  # raised by a nested __post_init__ with a path relative to it
        raise FieldError(_join(path, exc.path), exc.message) from None
    except ValueError as exc:
        raise FieldError(path, str(exc)) from None


def hint_at(cls: type, dotted: str) -> Any:
    """The type hint of a dotted field path, e.g. `workload.seq` in a suite; FieldError if there is none."""
    hint: Any = cls
    walked = ""
    for key in dotted.split("."):
        walked = _join(walked, key)
        if typing.get_origin(hint) is dict:  # free-form mappings (model.config, options) take any key
            hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
            continue
        if hint is Any:
            continue
        if not dataclasses.is_dataclass(hint):
            raise FieldError(walked, f"{walked.rsplit('.', 1)[0]} has no sub-fields")
        hints = field_hints(hint)
        if key not in hints:
            raise FieldError(walked, f"unknown field; the fields here are {', '.join(hints)}")
        hint = hints[key]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[Dataclass] -> Dataclass
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = inner[0] if len(inner) == 1 else hint
    return hint


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings, creating the mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise FieldError(dotted, f"cannot set a sub-field: {key} is {_describe(child)}")
        node = child
    node[last] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as a suite file's YAML is (`64` is a number, `[a, b]` a
    list, a mapping's keys unique)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FieldError("", f"--set takes key=value with a dotted key (e.g. workload.seq=64), got {text!r}")
    try:
        return key, strict_yaml.load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FieldError(key, f"value {raw!r} is not valid YAML: {problem}") from None


def parse_assignments(texts: list[str]) -> list[tuple[str, Any]]:
    """Every `--set key=value`, a key set at most once (as a suite file's mapping holds a key once)."""
    assignments = [parse_assignment(text) for text in texts]
    keys = [key for key, _ in assignments]
    for key in keys:
        if keys.count(key) > 1:
            values = " and ".join(repr(value) for k, value in assignments if k == key)
            raise FieldError(key, f"--set gives it {keys.count(key)} times ({values}); give it once")
    return assignments


def parse_bytes(value: int | str, path: str) -> int:
    """A byte count (see `revbench.units.parse_bytes`) as a field: errors name the field."""
    try:
        return units.parse_bytes(value)
    except ValueError as exc:
        raise FieldError(path, str(exc)) from None
