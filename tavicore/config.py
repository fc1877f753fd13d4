"""The one configuration loader: YAML files in ``conf/`` -> typed, validated dataclasses.

Every configuration object of the project is a frozen ``dataclass``. Fields carry their type
hints; ranges and choices are declared with :func:`setting`::

    @dataclass(frozen=True)
    class OptimConfig:
        name: Literal["adam", "radam", "rmsprop"] = "adam"
        lr: float = setting(1e-3, gt=0.0, le=1.0, doc="learning rate")

    cfg = load_config("conf/train/manet.yaml", OptimConfig, section="optim")

pydantic validates: each dataclass becomes, once, a strict pydantic ``TypedDict`` of its init
fields (``extra="forbid"``; :func:`setting` bounds as ``Field`` constraints) whose validated
values construct the dataclass, so its defaults and ``__post_init__`` checks apply. An unknown
key (with the closest valid names), a wrong type or an out-of-range value raises
:class:`ConfigError` naming the file and the dotted key. A bool is only true/false, an int is
never 3.0 or "3", a Literal matches value and type (512.0 is not 512); a float also reads
YAML 1.1's "1e-3" string. Field types: bool, int, float, str, pathlib.Path, Literal[...], Enum
(value or name), unions (first member that fits), list[T], tuple[T, ...], tuple[A, B],
dict[str, T], nested dataclasses; other classes are checked with isinstance.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import importlib.resources
import logging
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired, Required, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before Python 3.12

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


# --- Type hints -> pydantic types. Strict (a bool is never 1, an int never 3.0 or "3"); lax
# for containers and paths only, as YAML gives lists for tuples and strings for paths.

_STRICT = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)
_LAX = Strict(False)
#: pydantic error types meaning "not this kind of value" (rather than a failed check).
_MISMATCH = {"bool_type", "int_type", "float_type", "string_type", "path_type", "list_type",
             "tuple_type", "dict_type", "mapping_type", "literal_error", "enum", "is_instance_of"}
_EXPECTED = {"bool_type": "true/false", "int_type": "an integer", "float_type": "a number",
             "string_type": "a string", "path_type": "a path", "list_type": "a list",
             "tuple_type": "a list", "dict_type": "a mapping"}
_RANGE = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
          "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def _error(kind: str, message: str) -> PydanticCustomError:
    """A pydantic error whose text is already in the loader's words."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _to_float(value: Any) -> Any:
    """int -> float (ranges then print 0.0) and YAML 1.1's ``"1e-3"`` string -> float."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    return value


#: YAML 1.1 reads these words as booleans (``orthanc: no`` is False); a Literal that allows one of
#: them as a string takes the boolean back as that word.
_YAML_BOOL_WORDS = {True: ("yes", "on", "true", "y"), False: ("no", "off", "false", "n")}


def _literal(allowed: tuple[Any, ...], value: Any) -> Any:
    if any(type(value) is type(a) and value == a for a in allowed):  # 512.0 or True is not 512 or 1
        return value
    if isinstance(value, bool):
        words = [a for a in allowed if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
        if len(words) == 1:
            return words[0]
    raise _error("literal_error", f"invalid value {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _member(cls: type[enum.Enum], value: Any) -> enum.Enum:
    for member in cls:  # a member, its value or its name
        if value is member or value == member.value or value == member.name:
            return member
    raise _error("enum", f"invalid value {value!r}; allowed: {', '.join(repr(m.value) for m in cls)}")


def _length(n: int, value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) != n:
        raise _error("length", f"expected {n} items, got {len(value)}")
    return value


def _union(tp: Any, value: Any, handler: Any) -> Any:
    """Members are tried left to right. A value that no member takes is named with the whole
    type, unless a member got past its type check (a range, an element, a nested key)."""
    optional = len(get_args(tp)) == 2 and type(None) in get_args(tp)
    try:
        return handler(value)
    except ValidationError as exc:
        depth = 0 if optional else 1  # pydantic puts a member tag in the key of each try
        further = [e for e in exc.errors() if len(e["loc"]) > depth or e["type"] not in _MISMATCH]
        if further and optional:
            raise
        if further:
            raise _error("union", _describe(further[0])) from None
    raise _error("union_type", f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type[T], value: Any, handler: Any) -> T:
    """Validate a mapping against ``cls``'s fields with pydantic, then construct ``cls``."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise _error("mapping_type", f"expected a mapping for {cls.__name__}, got {type(value).__name__}")
    try:
        kwargs = handler(value)
    except ValidationError as exc:  # pydantic lists unknown keys after the fields: name them first
        unknown = [e for e in exc.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
        if not unknown:
            raise
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        close = difflib.get_close_matches(str(unknown[0]["loc"][0]), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        error = _error("unknown_key", f"unknown key{hint}; valid keys: {', '.join(sorted(names))}")
        line = {"type": error, "loc": unknown[0]["loc"], "input": unknown[0]["input"]}
        raise ValidationError.from_exception_data(cls.__name__, [line]) from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # __post_init__ cross-field checks
        raise _error("post_init", str(exc)) from exc


def _pydantic_type(tp: Any, bounds: Any = None) -> Any:
    """The pydantic type for a field of type ``tp``; ``bounds`` (a ``Field`` of ge/gt/le/lt)
    constrains its numbers, also inside lists, tuples and unions."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is int:
        return int if bounds is None else Annotated[int, bounds]
    if tp is float:
        return Annotated[(float, *([] if bounds is None else [bounds]), BeforeValidator(_to_float))]
    if tp is Path:
        return Annotated[Path, _LAX]
    if origin in (Union, types.UnionType):
        members = tuple(type(None) if a is type(None) else _pydantic_type(a, bounds) for a in args)
        mode = [] if len(members) == 2 and type(None) in members else [Field(union_mode="left_to_right")]
        union = Union[members]  # noqa: UP007 - members are computed, X | Y needs them written out
        return Annotated[(union, *mode, WrapValidator(functools.partial(_union, tp)))]
    if origin is Literal:
        return Annotated[tp, BeforeValidator(functools.partial(_literal, args))]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Annotated[tp, BeforeValidator(functools.partial(_member, tp))]
    if dataclasses.is_dataclass(tp):
        return _mapping_type(tp)
    if origin is list or tp is list:
        return Annotated[list[_pydantic_type(args[0], bounds) if args else Any], _LAX]
    if (origin is tuple or tp is tuple) and (not args or args[-1] is Ellipsis):
        return Annotated[tuple[_pydantic_type(args[0], bounds) if args else Any, ...], _LAX]
    if origin is tuple:
        items = tuple(_pydantic_type(a, bounds) for a in args)
        return Annotated[tuple[items], _LAX, BeforeValidator(functools.partial(_length, len(args)))]
    if origin is dict or tp is dict:  # keys as str, as YAML may read a name as an int
        return dict[Annotated[str, BeforeValidator(str)], _pydantic_type(args[1]) if args else Any]
    return tp  # bool, str, Any; other classes are checked with isinstance


@functools.cache
def _mapping_type(cls: type) -> Any:
    """``cls``'s init fields as a strict pydantic ``TypedDict`` whose validator builds ``cls``."""
    hints = get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.init:
            bounds = {k: f.metadata[k] for k in ("ge", "gt", "le", "lt") if f.metadata.get(k) is not None}
            tp = _pydantic_type(hints[f.name], Field(**bounds) if bounds else None)
            missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields[f.name] = Required[tp] if missing else NotRequired[tp]
    mapping = TypedDict(cls.__name__, fields)  # type: ignore[misc]
    mapping.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return Annotated[mapping, WrapValidator(functools.partial(_build, cls))]


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(_mapping_type(cls))


def _describe(error: Any) -> str:
    """The problem one pydantic error reports, in the loader's words."""
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if "message" in ctx:
        return ctx["message"]
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        return "required key is missing"
    if kind in _RANGE:
        return f"value {value!r} is out of range (must be {_RANGE[kind][1]} {ctx[_RANGE[kind][0]]})"
    expected = f"expected {_EXPECTED[kind]}" if kind in _EXPECTED else error["msg"]
    return f"{expected}, got {type(value).__name__} {value!r}"


def from_dict(cls: type[T], data: typing.Mapping[str, Any] | None, *, source: str = "") -> T:
    """Build and validate a config dataclass from a mapping.

    Args:
        cls: The dataclass type.
        data: Mapping of keys to values (``None`` means all defaults).
        source: Prefix for error messages (usually the file name).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value or missing required key (the
            first problem found, fields in declaration order, unknown keys of a mapping first).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source or cls.__name__}: expected a mapping at the top level")
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # raised by a __post_init__, which names its keys
        message = str(cause)
    else:  # ("destinations", 0, "port") -> destinations[0].port
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        message = f"{key or cls.__name__}: {_describe(error)}"
    raise ConfigError(f"{source}: {message}" if source else message)


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
    out = copy.deepcopy(data)
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

