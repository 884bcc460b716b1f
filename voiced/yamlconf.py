"""A YAML file into frozen dataclasses, with errors that name the file, the line and the key.

``load_document`` composes the YAML node graph (not ``safe_load``) so that every value keeps its
line, expands ``${ENV}`` references, and returns a tree of `Located` values; ``build`` turns one of
its mappings into a frozen dataclass, driven by the type hints. Every problem becomes one
`ConfigError`. Nothing here knows voiced's schema.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import itertools
import math
import os
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from voiced.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
Scalar = str | int | float | bool | datetime.date | bytes | None

NOT_IN_YAML = "voiced.yamlconf.not_in_yaml"
"""Field metadata key: ``field(metadata={NOT_IN_YAML: True})`` keeps a field out of the schema."""

_STR, _MAP, _SEQ = (f"tag:yaml.org,2002:{kind}" for kind in ("str", "map", "seq"))
# `$$` is a literal `$`; `${` opens a reference that must close and hold NAME or NAME:-default.
_DOLLAR = re.compile(r"\$(?:\$|\{(?P<body>[^}]*)(?P<close>\}?))")
_REFERENCE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_RESOLVER = yaml.resolver.Resolver()
MAX_VALUES = 10_000
"""Values a document may hold once its aliases are expanded (a config has a few hundred): past
it, aliases nested in aliases (a "billion laughs") would take minutes and gigabytes to expand."""
MAX_INT = 2**63 - 1
"""The largest integer a setting takes: past it, no setting means anything, and floats, SQLite
and C libraries fail on it with errors of their own."""


def _is_int(value: object) -> bool:
    """An integer a setting can take: no bool, and at most `MAX_INT` either way."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT


def _is_number(value: object) -> bool:
    """Such an integer, or a float but NaN, which every range check (``x < 0``) lets through."""
    return _is_int(value) or (isinstance(value, float) and not math.isnan(value))


# What each plain field type is called in errors, and which values fit it (bools are no numbers).
_SIMPLE: dict[object, tuple[str, Callable[[object], bool]]] = {
    str: ("a string", lambda v: isinstance(v, str)),
    int: ("an integer", _is_int),
    float: ("a number", _is_number),
    bool: ("a boolean", lambda v: isinstance(v, bool)),
    type(None): ("null", lambda v: v is None),
}


@dataclasses.dataclass(frozen=True)
class Located:
    """One value of a config document and where it was written.

    Args:
        value: ``dict[str, Located]``, ``list[Located]``, or the resolved scalar.
        line: the 1-based line of its key (in a mapping), of the item (in a sequence), or of the
            document start (the root): where an operator looks first.
        file: the config file.
        key: its dotted path from the root, e.g. ``plugins.http.port`` or ``a.b[0]``.
    """

    value: dict[str, Located] | list[Located] | Scalar
    line: int
    file: str
    key: str = ""


class FieldError(ValueError):
    """Raised by a ``__post_init__`` check to blame one field; `build` reports it at that key.

    Args:
        message: what is wrong with the field, e.g. ``required when backend is wav``.
        field: the field's name.
    """

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


def load_document(path: str | Path) -> Located:
    """Read and parse a YAML config file, expanding ``${VAR}``, ``${VAR:-default}`` and ``$$``.

    Args:
        path: the file; errors name it as given.

    Returns:
        The root mapping (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing, unreadable or not YAML; the top level is no mapping; a
            key is not a string or repeats; an environment variable is unset.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        hint = "pass --config FILE, or create ./config.yaml"
        raise ConfigError(f"config file not found ({hint})", file=file) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=file) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.context and exc.context_mark:
            where = f" ({exc.context}, line {exc.context_mark.line + 1})"
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"invalid YAML: {exc.problem}{where}", file=file, line=line) from exc
    except yaml.YAMLError as exc:  # the reader's bad-character errors carry no line
        raise ConfigError(f"invalid YAML: {str(exc).splitlines()[0]}", file=file) from exc
    except RecursionError:  # nested deeper than the composer's recursion can follow
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    if root is None:
        return Located({}, 1, file)
    try:
        document = _locate(root, file, "", root.start_mark.line + 1, itertools.count())
    except RecursionError:  # nested too deeply, or a collection holding an alias of itself
        message = "nested too deeply, or an alias inside the collection it names"
        raise ConfigError(message, file=file) from None
    return Located(as_mapping(document, ""), document.line, file)


def _locate(
    node: yaml.Node, file: str, key: str, line: int, counted: itertools.count[int]
) -> Located:
    if next(counted) >= MAX_VALUES:
        message = f"over {MAX_VALUES} values once its aliases are expanded (aliases of aliases?)"
        raise ConfigError(message, file=file, line=line, key=key)
    if isinstance(node, yaml.ScalarNode):
        return Located(_scalar(node, file, key, line), line, file, key)
    if node.tag not in (_MAP, _SEQ):
        raise ConfigError(f"unsupported YAML tag {node.tag}", file=file, line=line, key=key)
    if isinstance(node, yaml.SequenceNode):
        items = [
            _locate(item, file, f"{key}[{i}]", item.start_mark.line + 1, counted)
            for i, item in enumerate(node.value)
        ]
        return Located(items, line, file, key)
    entries: dict[str, Located] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
            # The merge key `<<` lands here too: merging would hide duplicates and lines.
            shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
            message = f"keys must be strings (quote it), got {shown}"
            raise ConfigError(message, file=file, line=key_line, key=key)
        path = _join(key, key_node.value)
        if key_node.value in entries:
            message = f"duplicate key (first on line {entries[key_node.value].line})"
            raise ConfigError(message, file=file, line=key_line, key=path)
        entries[key_node.value] = _locate(value_node, file, path, key_line, counted)
    return Located(entries, line, file, key)


def _scalar(node: yaml.ScalarNode, file: str, key: str, line: int) -> Scalar:
    if node.tag == _STR and "$" in node.value:
        text = _DOLLAR.sub(lambda match: _expand(match, file, key, line), node.value)
        if node.style is not None:  # quoted or block: the author meant a string
            return text
        # Resolve a plain scalar again, so `port: ${PORT}` is an int as if PORT were typed there.
        tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
    try:
        value: Scalar = yaml.constructor.SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError) as exc:  # unknown tags, impossible dates
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
        raise ConfigError(f"invalid value: {problem}", file=file, line=line, key=key) from exc
    except (LookupError, AttributeError) as exc:  # `!!bool maybe`, `!!int ''`, `!!timestamp x`
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        message = f"invalid value: {_describe(node.value)} is not a {tag}"
        raise ConfigError(message, file=file, line=line, key=key) from exc
    return value


def _expand(match: re.Match[str], file: str, key: str, line: int) -> str:
    if match["body"] is None:
        return "$"
    reference = _REFERENCE.fullmatch(match["body"]) if match["close"] else None
    if reference is None:
        message = f"bad reference {match[0]}: write ${{NAME}} or ${{NAME:-default}}, and $$ for $"
        raise ConfigError(message, file=file, line=line, key=key)
    name, default = reference["name"], reference["default"]
    value = os.environ.get(name)
    if default is not None and not value:
        return default
    if value is None:
        message = f"environment variable {name} is not set (set it, or write ${{{name}:-default}})"
        raise ConfigError(message, file=file, line=line, key=key)
    return value


def build(cls: type[T], node: Located, key: str) -> T:
    """Build the frozen dataclass ``cls`` from a mapping, checking every key and type.

    Field types: ``str``, ``int``, ``float`` (ints accepted), ``bool``, a ``Literal`` of strings,
    unions such as ``str | int | None`` (the first member that fits wins), dataclasses,
    ``dict[str, V]``, ``tuple[V, ...]``, and `Located` (the node, untouched). Absent keys take the
    defaults; null for a dataclass means all defaults, or None where None is allowed.

    Args:
        cls: a dataclass; fields with ``metadata={NOT_IN_YAML: True}`` are not read.
        node: the mapping (null counts as empty).
        key: the dotted path of ``node`` for errors, e.g. ``plugins.http`` (``""`` for the root).

    Returns:
        The dataclass instance.

    Raises:
        ConfigError: an unknown or missing key, a wrong type, or a ``ValueError`` from
            ``__post_init__`` (reported at the mapping, or at the field a `FieldError` names).
    """
    entries = as_mapping(node, key)
    hints = get_type_hints(cls)
    fields = {
        field.name: field
        for field in dataclasses.fields(cls)
        if field.init and not field.metadata.get(NOT_IN_YAML)
    }
    values: dict[str, object] = {}
    for name, child in entries.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            message = f"unknown key (known: {', '.join(fields)}){hint}"
            raise ConfigError(message, file=child.file, line=child.line, key=_join(key, name))
        values[name] = _convert(hints[name], child, _join(key, name))
    for name, field in fields.items():
        if name not in values and field.default is field.default_factory is dataclasses.MISSING:
            message, missing = "required key is missing", _join(key, name)
            raise ConfigError(message, file=node.file, line=node.line, key=missing)
    try:
        return cls(**values)
    except FieldError as exc:
        line = entries.get(exc.field, node).line
        raise ConfigError(exc.reason, file=node.file, line=line, key=_join(key, exc.field)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc), file=node.file, line=node.line, key=key) from exc
    except OSError as exc:  # a check that looks at the file system (a path too long to stat)
        message = f"cannot check it: {exc.strerror or exc}"
        raise ConfigError(message, file=node.file, line=node.line, key=key) from exc


def as_mapping(node: Located, key: str) -> dict[str, Located]:
    """The entries of a mapping node (null counts as empty), in document order.

    Args:
        node: the node.
        key: its dotted path, for errors.

    Raises:
        ConfigError: ``node`` is neither a mapping nor null.
    """
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        message = f"expected a mapping, got {_describe(node.value)}"
        raise ConfigError(message, file=node.file, line=node.line, key=key)
    return node.value


def _convert(hint: object, node: Located, key: str) -> object:
    """Check ``node`` against one type hint and return the field's Python value."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Located:
        return node
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, node, key)
    if origin is dict:
        return {k: _convert(args[1], v, _join(key, k)) for k, v in as_mapping(node, key).items()}
    if origin is tuple and isinstance(node.value, list):
        return tuple(_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(node.value))
    expected, fits = _shape(hint)
    if origin in (Union, types.UnionType):
        for member in args:
            if _shape(member)[1](node.value):
                return _convert(member, node, key)
    elif fits(node.value):
        # `backend: null` reads as YAML null: take it as the `null` backend it plainly names.
        if origin is Literal and node.value is None:
            return "null"
        return float(node.value) if hint is float and isinstance(node.value, int) else node.value
    message = f"expected {expected}, got {_describe(node.value)}"
    raise ConfigError(message, file=node.file, line=node.line, key=key)


def _shape(hint: object) -> tuple[str, Callable[[object], bool]]:
    """What a type hint is called in errors, and whether a value fits it at the top level."""
    origin, args = get_origin(hint), get_args(hint)
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    if origin is Literal:  # of strings; a YAML null fits "null" (see _convert)
        return f"one of {', '.join(args)}", lambda v: ("null" if v is None else v) in args
    if origin in (Union, types.UnionType):
        *names, last = (_shape(member)[0] for member in args)
        return f"{', '.join(names)} or {last}", lambda v: any(_shape(m)[1](v) for m in args)
    if origin is tuple:
        return "a list", lambda v: isinstance(v, list)
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping", lambda v: isinstance(v, dict)
    raise TypeError(f"yamlconf does not support the field type {hint!r}")


def _describe(value: object) -> str:
    """Show a YAML value as it was likely written."""
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) and abs(value) > MAX_INT:  # str() refuses past 4300 digits
        return f"an integer of {value.bit_length()} bits (too large)"
    return repr(value) if isinstance(value, str) else str(value)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
