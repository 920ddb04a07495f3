"""Typed, nested dataclass configs: defaults < YAML file < ``key=value`` overrides.

Every command of factkeep is driven by one dataclass (fields may be nested dataclasses). A field's
help text lives in ``field(metadata={"help": ...})`` and becomes the command's ``--help``. Keys are
dotted paths (``pretrain.lr``); an unknown key is an error that names the key and suggests the
closest known one.

Example::

    cfg = resolve_config(WorldConfig, yaml_path="world.yaml", overrides=["pretrain.lr=3e-3"])
    factkeep.rundir.save_config(cfg, "runs/world/config.yaml")  # the run folder writes it
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from factkeep.errors import FactkeepError

T = TypeVar("T")


class ConfigError(FactkeepError, ValueError):
    """A configuration value or key is invalid; the message says which and why."""


def help_field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by ``--help``).

    Mutable defaults (lists, dicts) are copied per instance.
    """
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def nested(cls: type[T], help: str = "", factory: Callable[[], T] | None = None) -> Any:
    """A dataclass field holding a nested config section (``factory`` builds its default, if
    not ``cls()``)."""
    return dataclasses.field(default_factory=factory or cls, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One leaf option of a config: its dotted key, type, default and help text."""

    key: str
    type_name: str
    default: Any
    help: str


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_options(cls: type, prefix: str = "", defaults: Any = None) -> Iterator[OptionInfo]:
    """Yield every leaf option of a config dataclass, depth first, in declaration order.

    ``defaults`` is the instance whose values are reported (``cls()`` if omitted); a nested
    section reports the values of its parent's default, which may differ from its own class's.
    """
    hints = _resolved_hints(cls)
    if defaults is None:
        defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_options(tp, f"{key}.", getattr(defaults, f.name))  # type: ignore[arg-type]
            continue
        yield OptionInfo(
            key=key,
            type_name=_type_name(tp),
            default=getattr(defaults, f.name),
            help=f.metadata.get("help", ""),
        )


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (converting where it is lossless) or raise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and value not in allowed:  # YAML 1.1 reads no/yes/off as bools
            spelled = [a for a in allowed if isinstance(a, str) and yaml.safe_load(a) is value]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in allowed:
            raise ConfigError(f"option '{key}': {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"option '{key}': {value!r} does not fit type {_type_name(tp)}")
    if origin in (list, tuple, Sequence):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"option '{key}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"option '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"option '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"option '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"option '{key}': expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"option '{key}': expected {_type_name(tp)}, got {value!r}")
    return value


def _parse_scalar(text: str) -> Any:
    """Parse an override's right-hand side as YAML (``3e-4`` -> float, ``a,b`` stays a str)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-4" as a string; accept it as a float when it is one.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not close:
        # Also try the last component alone (e.g. "lrr" -> "pretrain.lr").
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.6)
        close = [leaves[leaf[0]]] if leaf else []
    return f"; did you mean '{close[0]}'?" if close else ""


def set_option(cfg: Any, key: str, value: Any, source: str = "override") -> None:
    """Set the dotted ``key`` of a config instance to ``value``, type-checked.

    Raises:
        ConfigError: if the key is unknown (with a suggestion) or the value has the wrong type.
    """
    parts = key.split(".")
    node = cfg
    known = [o.key for o in iter_options(type(cfg))]
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node)}
        if part not in names:
            raise ConfigError(f"{source}: unknown option '{key}'{_suggest(key, known)}")
        tp = _resolved_hints(type(node))[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"{source}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = getattr(node, part)
            continue
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' is a section; give a mapping")
            for sub_key, sub_value in value.items():
                set_option(cfg, f"{key}.{sub_key}", sub_value, source)
            return
        setattr(node, part, _coerce(value, tp, key))


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in mapping.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def resolve_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Build a config: dataclass defaults, then a YAML file, then ``key=value`` overrides.

    Args:
        cls: the config dataclass.
        yaml_path: optional YAML file whose (nested) keys mirror the dataclass fields.
        overrides: strings ``dotted.key=value``; the value is parsed as YAML.

    Raises:
        ConfigError: naming the file or override, the key, and what is wrong.
    """
    cfg = cls()
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of options")
        for key, value in _flatten(data):
            set_option(cfg, key, value, source=str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, text = item.split("=", 1)
        set_option(cfg, key.strip().lstrip("-"), _parse_scalar(text), source="override")
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config instance (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def load_saved_config(cls: type[T], path: str | Path) -> T:
    """Read a config written by :func:`factkeep.rundir.save_config` back into its dataclass.

    Raises:
        ConfigError: the file is unreadable, or holds an unknown option or a value of the wrong
            type; the message names the file.
    """
    try:
        return resolve_config(cls, yaml_path=path)
    except ConfigError as exc:
        if str(path) in str(exc):
            raise
        raise ConfigError(f"{path}: {exc}") from exc
