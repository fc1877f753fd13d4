"""The one configuration loader: YAML files in ``conf/`` -> typed, validated dataclasses.

Every configuration object of the project is a frozen ``dataclass``. Fields carry their type
hints; ranges and choices are declared with :func:`setting`::

    @dataclass(frozen=True)
    class OptimConfig:
        name: Literal["adam", "radam", "rmsprop"] = "adam"
        lr: float = setting(1e-3, gt=0.0, le=1.0, doc="learning rate")

    cfg = load_config("conf/train/manet.yaml", OptimConfig, section="optim")

Validation is strict: an unknown key (with the closest valid names), a wrong type or an
out-of-range value raises :class:`ConfigError` whose message names the file and the dotted key.
Supported field types: bool, int, float, str, pathlib.Path, Literal[...], Enum subclasses,
Optional[T], list[T], tuple[T, ...], dict[str, T] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.resources
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from tavicore.errors import TavisegError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Folder holding the project's default YAML configuration: the ``conf`` data package, found
#: through the installed distribution (editable or not), never through the source tree.
CONF_DIR = Path(str(importlib.resources.files("conf")))


class ConfigError(TavisegError, ValueError):
    """A configuration file or mapping is invalid; the message names the key and the problem."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """Declare a dataclass field with bounds checked by the loader.

    Args:
        default: Default value (omit for a required key).
        default_factory: Factory for mutable defaults.
        ge, gt, le, lt: Inclusive/exclusive numeric bounds (applied to every element of a
            list or tuple of numbers).
        doc: One-line description used in error messages and ``--help`` output.
    """
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    """Readable name of a field type: ``Path | None``, ``list[int]``, ``tuple[float, ...]``."""
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_bounds(v, meta, f"{where}[{i}]")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    checks = (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    )
    for key, ok, sym in checks:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where}: value {value!r} is out of range (must be {sym} {bound})")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    args = get_args(tp)

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    if origin is Literal:
        for allowed in args:  # type-strict: 512.0 or True must not pass as 512 or 1
            if type(value) is type(allowed) and value == allowed:
                return allowed
        allowed = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{where}: invalid value {value!r}; allowed: {allowed}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        allowed = ", ".join(repr(m.value) for m in tp)
        raise ConfigError(f"{where}: invalid value {value!r}; allowed: {allowed}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}"
            )
        return _build(tp, value, where)
    if origin in (list, typing.List) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, typing.Tuple) or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        if not args:
            return tuple(value)
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: typing.Mapping[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"{where}.{key}: unknown key{hint}; valid keys: {valid}".lstrip("."))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key_where = f"{where}.{name}".lstrip(".")
        if name in data:
            value = _convert(data[name], hints[name], key_where)
            _check_bounds(value, f.metadata, key_where)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_where}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ cross-field checks
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def from_dict(cls: type[T], data: typing.Mapping[str, Any] | None, *, source: str = "") -> T:
    """Build and validate a config dataclass from a mapping.

    Args:
        cls: The dataclass type.
        data: Mapping of keys to values (``None`` means all defaults).
        source: Prefix for error messages (usually the file name).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value or missing required key.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source or cls.__name__}: expected a mapping at the top level")
    try:
        return _build(cls, data, "")
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ConfigError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(
    path: str | Path,
    cls: type[T],
    *,
    section: str | None = None,
    overrides: typing.Mapping[str, Any] | None = None,
) -> T:
    """Load ``path`` (optionally one top-level ``section`` of it) into ``cls``.

    Args:
        path: YAML file.
        cls: Target dataclass.
        section: Top-level key to read instead of the whole file.
        overrides: Dotted-key overrides applied after reading (``{"optim.lr": 1e-4}``).

    Raises:
        ConfigError: see :func:`from_dict`.
    """
    data = read_yaml(path)
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: section {section!r} is missing")
        data = data[section] or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=str(path))


def apply_overrides(data: dict[str, Any], overrides: typing.Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key ``overrides`` applied (``a.b: 1``)."""
    out = _deep_copy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key.sub=value`` override; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: empty key before '='")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def to_dict(cfg: Any) -> Any:
    """Convert a config dataclass (recursively) to plain YAML/JSON-serialisable values."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
