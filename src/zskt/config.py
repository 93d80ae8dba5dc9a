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


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    required_later: tuple[str, ...] = (),
) -> None:
    """Add one option per field of the dataclass `cls`; values stay strings until `config_from_args`.
    `required` fields are required by argparse; `required_later` ones are marked "(required)" in the help and
    checked by the caller after parsing (so that a replayed config can supply them, see `replay_values`)."""
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    group = parser.add_argument_group(f"{cls.__name__} (any field can be set)")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        text = help_with_default(f.metadata.get("help", ""), f.default)
        if f.name in required_later and "required" not in text.lower():
            text = f"(required) {text}"
        # argparse %-formats option help: a literal % in a field's help (e.g. "30/60/80%") must be doubled.
        text = text.replace("%", "%%")
        names = [option_name(f.name), *aliases.get(f.name, ())]
        if _unwrap_optional(tp)[0] is bool:
            group.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            group.add_argument(
                *names,
                dest=f.name,
                metavar=_type_label(tp),
                default=None,
                required=f.name in required,
                help=text,
            )


def help_with_default(help_text: str, default: Any) -> str:
    """A field's help with its default appended, unless the help already states it (it says "default" or
    "required"): a None default means "chosen from the data set or another field", which only the help can
    say, so it is shown only by the help text itself ("(default: preset)" would repeat or contradict it)."""
    low = help_text.lower()
    if "default" in low or "required" in low:
        return help_text
    if default is None:
        return help_text + " (default: none)"
    if default == "" and isinstance(default, str):
        return help_text
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{help_text} (default: {shown})"


def config_from_args(
    cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None, **overrides: Any
):
    """Build `cls` from parsed options: only options given on the command line replace defaults, or replace
    the values of `base` (a replayed config.json's fields, see `replay_values`) when given."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if base:
        values.update(_from_json(cls, base))
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
        raise ZsktError(
            f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ZsktError(f"invalid {cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def from_dict(cls: type, values: dict[str, Any]):
    """Rebuild a config from its `config.json` form (lists back to tuples)."""
    return make_config(cls, **_from_json(cls, values))


def _from_json(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fixed = {}
    for k, v in values.items():
        tp = _unwrap_optional(hints.get(k, Any))[0]
        fixed[k] = tuple(v) if isinstance(v, list) and get_origin(tp) is tuple else v
    return fixed


def replay_values(path: str, command: str) -> dict[str, Any]:
    """The config fields of a run's config.json, for `zskt COMMAND --config PATH` (a run folder works too).

    The "command" entry must be COMMAND; "resolved" (what the run derived) is dropped; an input file (teacher,
    init) that is not found as written (a relative path from another folder) is taken from the absolute path
    the run recorded, when that file is still there."""
    import json
    from pathlib import Path

    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        saved = json.loads(file.read_text())
    except FileNotFoundError:
        raise ZsktError(f"--config {path}: file not found; give a run's config.json or its folder") from None
    except (OSError, ValueError) as e:
        raise ZsktError(f"--config {path}: not a readable JSON file ({e})") from None
    if not isinstance(saved, dict):
        raise ZsktError(f"--config {path}: expected a JSON object of config fields")
    was = saved.pop("command", command)
    if was != command:
        raise ZsktError(
            f"--config {path} is the config of `zskt {was}`, not of `zskt {command}`; "
            f"replay it with zskt {was} --config {path}"
        )
    resolved = saved.pop("resolved", None) or {}
    saved.pop("config_changes", None)  # a resume's record of changed options (runlog.CONFIG_CHANGES)
    for name, record in (resolved.get("inputs") or {}).items():
        value = saved.get(name)
        if isinstance(value, str) and value and not Path(value).is_file() and Path(record["path"]).is_file():
            saved[name] = record["path"]
    return saved


def check(condition: bool, message: str) -> None:
    """Cross-field checks in `__post_init__`: a failed one becomes a one-line ZsktError."""
    if not condition:
        raise ZsktError(message)
