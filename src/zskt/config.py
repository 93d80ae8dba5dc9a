"""Frozen-dataclass configs and their command-line form.

Each method keeps one frozen dataclass whose defaults are the paper's values; every field carries a one-line
`help` (its meaning and source) in its metadata. This module turns such a class into typed, validated
argparse options (`--field-name`), so any config field can be overridden and a bad value is a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from zskt.errors import ZsktError


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by `--help`), e.g. `lr: float = field(0.1, "...")`."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def parse_value(tp: Any, text: str, name: str) -> Any:
    """Parse one command-line string as the field's type; raise ZsktError on a bad value."""
    tp, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", ""):
        return None
    try:
        if get_origin(tp) is Literal:
            choices = get_args(tp)
            if text not in choices:
                raise ValueError(f"choose one of {', '.join(map(str, choices))}")
            return text
        if get_origin(tp) is tuple:
            item = get_args(tp)[0]
            return tuple(parse_value(item, part.strip(), name) for part in text.split(",") if part.strip())
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError as e:
        raise ZsktError(f"bad value {text!r} for {option_name(name)}: {e}") from None
    raise TypeError(f"unsupported config type {tp!r} for {name}")


def _type_label(tp: Any) -> str:
    tp, _ = _unwrap_optional(tp)
    if get_origin(tp) is Literal:
        return "{" + ",".join(map(str, get_args(tp))) + "}"
    if get_origin(tp) is tuple:
        return f"{get_args(tp)[0].__name__},..."
    return tp.__name__.upper()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                         required: tuple[str, ...] = (), aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """Add one option per field of the dataclass `cls`; values stay strings until `config_from_args`."""
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    group = parser.add_argument_group(f"{cls.__name__} (any field can be set)")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        default = f.default
        help_text = f.metadata.get("help", "")
        shown = "preset" if default is None else (",".join(map(str, default)) if isinstance(default, tuple)
                                                  else default)
        names = [option_name(f.name), *aliases.get(f.name, ())]
        if _unwrap_optional(tp)[0] is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default: {shown})")
        else:
            group.add_argument(*names, dest=f.name, metavar=_type_label(tp), default=None,
                               required=f.name in required, help=f"{help_text} (default: {shown})")


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build `cls` from parsed options: only options given on the command line replace defaults."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        values[f.name] = raw if isinstance(raw, bool) else parse_value(hints[f.name], raw, f.name)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(cls, **values)


def make_config(cls: type, **values: Any):
    """`cls(**values)`, with unknown keys and failed checks turned into one-line errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ZsktError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ZsktError(f"invalid {cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def from_dict(cls: type, values: dict[str, Any]):
    """Rebuild a config from its `config.json` form (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    fixed = {}
    for k, v in values.items():
        tp = _unwrap_optional(hints.get(k, Any))[0]
        fixed[k] = tuple(v) if isinstance(v, list) and get_origin(tp) is tuple else v
    return make_config(cls, **fixed)


def check(condition: bool, message: str) -> None:
    """Cross-field checks in `__post_init__`: a failed one becomes a one-line ZsktError."""
    if not condition:
        raise ZsktError(message)
