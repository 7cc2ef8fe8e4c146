"""Typed schemas for JSON that strangers hand us: ``file:`` JSON, source specs, preprocessing.

A schema is a mapping of key -> :class:`Field`. :func:`check_mapping` checks a decoded JSON object
against one before any value reaches torch, timm, torchvision or transformers: unknown keys are
an error naming the key (with a did-you-mean), then each value's type is checked exactly (``True``
is not a number, ``"1"`` is not a number, a string is not a list), then its range or choices.
Keys listed as *refused* (e.g. ``checkpoint_path`` for timm) raise ``UnsafeFileError``.

Example::

    FIELDS = {"image_size": integer(16, 1024, optional=True), "mean": numbers(min_items=1, max_items=4)}
    values = check_mapping(json.loads(text), FIELDS, where="'model.json'")
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from transferkit.errors import ConfigError, TransferKitError, UnsafeFileError

#: Value kinds a field can hold.
KINDS = ("int", "float", "bool", "str", "list", "mapping")
#: A conservative name: letters, digits, ``_ . -``, starting with a letter or digit.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}"
#: Longest string accepted when a field sets no ``max_chars``.
MAX_CHARS = 1000


@dataclass(frozen=True)
class Field:
    """What one key of a JSON object may hold.

    Build fields with :func:`integer`, :func:`number`, :func:`boolean`, :func:`string`,
    :func:`strings`, :func:`numbers`, :func:`list_of` and :func:`mapping` rather than directly.

    Attributes:
        kind: One of ``KINDS``.
        low, high: Inclusive bounds for numbers (exclusive where ``low_open`` / ``high_open``).
        low_open, high_open: Whether ``low`` / ``high`` themselves are excluded.
        choices: The only values allowed (strings or numbers).
        pattern: A regular expression a string must match in full.
        max_chars: Longest string allowed.
        item: The field each list item must satisfy (``kind == "list"``).
        min_items, max_items: List length bounds.
        fields: The schema of a nested object (``kind == "mapping"``); None allows any string key
            whose value satisfies ``values``.
        values: The field every value of a free-keyed nested object satisfies.
        refused: Keys of a nested object refused as unsafe, each with the reason.
        optional: ``None`` (JSON ``null``) is allowed.
        required: The key must be present.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    pattern: str | None = None
    max_chars: int = MAX_CHARS
    item: Field | None = None
    min_items: int = 0
    max_items: int | None = None
    fields: Mapping[str, Field] | None = None
    values: Field | None = None
    refused: Mapping[str, str] | None = None
    optional: bool = False
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Field kind must be one of {KINDS}; got {self.kind!r}")


# -- field factories -----------------------------------------------------------------------------


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False,
            required: bool = False, choices: tuple[int, ...] | None = None) -> Field:
    """A whole number (not a bool, not a float such as ``3.0``) in ``[low, high]``."""
    return Field("int", low=low, high=high, optional=optional, required=required, choices=choices)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, optional: bool = False, required: bool = False) -> Field:
    """A finite number (an int or a float, not a bool) in ``[low, high]`` (open ends as given)."""
    return Field("float", low=low, high=high, low_open=low_open, high_open=high_open, optional=optional,
                 required=required)


def boolean(*, optional: bool = False, required: bool = False) -> Field:
    """``true`` or ``false`` only (not ``0``, ``1`` or ``"no"``)."""
    return Field("bool", optional=optional, required=required)


def string(*, choices: tuple[str, ...] | None = None, pattern: str | None = None, max_chars: int = MAX_CHARS,
           optional: bool = False, required: bool = False) -> Field:
    """A string, one of ``choices`` or matching ``pattern`` in full when given."""
    return Field("str", choices=choices, pattern=pattern, max_chars=max_chars, optional=optional,
                 required=required)


def list_of(item: Field, *, min_items: int = 0, max_items: int | None = None, optional: bool = False,
            required: bool = False) -> Field:
    """A JSON array whose items each satisfy ``item``."""
    return Field("list", item=item, min_items=min_items, max_items=max_items, optional=optional,
                 required=required)


def strings(*, choices: tuple[str, ...] | None = None, pattern: str | None = None, min_items: int = 0,
            max_items: int | None = None, optional: bool = False, required: bool = False) -> Field:
    """A list of strings (``list[str]``); a single string is not accepted."""
    return list_of(string(choices=choices, pattern=pattern), min_items=min_items, max_items=max_items,
                   optional=optional, required=required)


def numbers(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, min_items: int = 0, max_items: int | None = None, optional: bool = False,
            required: bool = False) -> Field:
    """A list of finite numbers (``list[float]``), each in ``[low, high]``."""
    return list_of(number(low, high, low_open=low_open, high_open=high_open), min_items=min_items,
                   max_items=max_items, optional=optional, required=required)


def mapping(fields: Mapping[str, Field] | None = None, *, values: Field | None = None,
            refused: Mapping[str, str] | None = None, optional: bool = False, required: bool = False) -> Field:
    """A nested JSON object checked against ``fields`` (or, with ``fields=None``, free string keys
    whose values satisfy ``values``)."""
    return Field("mapping", fields=fields, values=values, refused=refused, optional=optional, required=required)


# -- checking ------------------------------------------------------------------------------------


def check_mapping(values: object, fields: Mapping[str, Field], where: str, *, prefix: str = "",
                  refused: Mapping[str, str] | None = None,
                  error: type[TransferKitError] = ConfigError) -> dict:
    """Checks a decoded JSON object against a schema.

    Args:
        values: The decoded JSON (anything: it came from a stranger).
        fields: The schema, key -> field.
        where: Where the object comes from, for messages (e.g. ``"'run/config.json'"``).
        prefix: Dotted path of the object inside its file (``"source.spec."``), for messages.
        refused: Keys refused as unsafe, each with the reason (``UnsafeFileError``).
        error: The error raised for wrong types, ranges and unknown keys.

    Returns:
        A new dict with the keys that were present, numbers as ``float`` where the field is a
        float and tuples as lists; missing optional keys are not filled in.

    Raises:
        UnsafeFileError: A refused key is present.
        TransferKitError: ``error`` for anything else that does not match the schema.
    """
    if not isinstance(values, dict):
        raise error(f"`{prefix.rstrip('.') or 'the file'}` in {where} must be a JSON object (key: value); "
                    f"got {_kind_of(values)} {_show(values)}. Write it again with the program that made it.")
    out = {}
    for key, value in values.items():
        if refused and key in refused:
            raise UnsafeFileError(f"`{prefix}{key}` in {where} is refused: {refused[key]}. Remove the key.")
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(fields) or "none"
            raise error(f"Unknown key {_key(prefix, key)} in {where}.{hint} Known keys: {known}.")
        out[key] = check_value(value, fields[key], f"{prefix}{key}", where, error=error)
    missing = [k for k, f in fields.items() if f.required and k not in values]
    if missing:
        raise error(f"{where} lacks {', '.join(f'`{prefix}{k}`' for k in missing)} "
                    f"({describe(fields[missing[0]])}). Write it again with the program that made it.")
    return out


def check_value(value: object, field: Field, name: str, where: str, *,
                error: type[TransferKitError] = ConfigError) -> object:
    """Checks one value against a field: type first, then range, choices, pattern or items.

    Args:
        value: The decoded JSON value.
        field: What it must be.
        name: Its dotted key, for messages.
        where: Where it comes from, for messages.
        error: The error raised when it does not match.

    Returns:
        The value (ints as floats for float fields, tuples as lists, nested objects checked).
    """
    if value is None and field.optional:
        return None

    def fail() -> TransferKitError:
        return error(f"`{name}` in {where} must be {describe(field)}; got {_show(value)}.")

    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail()
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail()
        if not _in_range(value, field) or (field.choices is not None and value not in field.choices):
            raise fail()
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
            raise fail()
        if not _in_range(value, field):
            raise fail()
        return float(value)
    if kind == "str":
        if not isinstance(value, str) or len(value) > field.max_chars:
            raise fail()
        if field.choices is not None and value not in field.choices:
            close = difflib.get_close_matches(value, [str(c) for c in field.choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise error(f"`{name}` in {where} must be {describe(field)}; got {_show(value)}.{hint}")
        if field.pattern is not None and not re.fullmatch(field.pattern, value):
            raise fail()
        return value
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            raise fail()
        if len(value) < field.min_items or (field.max_items is not None and len(value) > field.max_items):
            raise fail()
        return [check_value(v, field.item, f"{name}[{i}]", where, error=error) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise fail()
    return _check_object(value, field, name, where, error)


def _check_object(value: dict, field: Field, name: str, where: str, error: type[TransferKitError]) -> dict:
    """A mapping field: named fields (``check_mapping``), or free keys whose values share one field."""
    if field.fields is not None:
        return check_mapping(value, field.fields, where, prefix=f"{name}.", refused=field.refused, error=error)
    out = {}
    for key, item in value.items():
        if field.refused and key in field.refused:
            raise UnsafeFileError(f"`{name}.{key}` in {where} is refused: {field.refused[key]}. Remove the key.")
        if not isinstance(key, str) or len(key) > MAX_CHARS:
            raise error(f"`{name}` in {where} must have string keys; got {_show(key, 60)}.")
        out[key] = check_value(item, field.values, f"{name}.{key}", where, error=error) if field.values else item
    return out


def describe(field: Field) -> str:
    """What a field accepts, in words: ``"a whole number from 16 to 1024 (or null)"``."""
    kind = field.kind
    if kind == "bool":
        text = "true or false"
    elif kind == "int":
        text = "a whole number" + _range_words(field)
        if field.choices is not None:
            text = f"one of {', '.join(map(str, field.choices))}"
    elif kind == "float":
        text = "a finite number" + _range_words(field)
    elif kind == "str":
        if field.choices is not None:
            text = f"one of {', '.join(repr(c) for c in field.choices)}"
        elif field.pattern is not None:
            text = f"a name of letters, digits and `_.-` (up to {field.max_chars} characters)"
        else:
            text = f"a string of up to {field.max_chars} characters"
    elif kind == "list":
        count = ""
        if field.max_items is not None and field.min_items == field.max_items:
            count = f" of {field.min_items}"
        elif field.max_items is not None:
            count = f" of {field.min_items} to {field.max_items}"
        elif field.min_items:
            count = f" of at least {field.min_items}"
        text = f"a list{count} items, each {describe(field.item)}"
    else:
        text = "an object (key: value)"
    return text + (" (or null)" if field.optional else "")


def _range_words(field: Field) -> str:
    if field.low is None and field.high is None:
        return ""
    if field.low is not None and field.high is not None:
        lo, hi = ("(" if field.low_open else "["), (")" if field.high_open else "]")
        return f" in {lo}{_num(field.low)}, {_num(field.high)}{hi}"
    if field.low is not None:
        return f" {'>' if field.low_open else '>='} {_num(field.low)}"
    return f" {'<' if field.high_open else '<='} {_num(field.high)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _in_range(value: int | float, field: Field) -> bool:
    # Compares without converting to float, so a 400-digit int is simply out of range.
    if field.low is not None and (value <= field.low if field.low_open else value < field.low):
        return False
    if field.high is not None and (value >= field.high if field.high_open else value > field.high):
        return False
    return True


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _kind_of(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _key(prefix: str, key: object) -> str:
    """A key for messages: `` `prefix.key` ``, or its repr when it is not a short printable string."""
    if isinstance(key, str) and key.isprintable() and "`" not in key and len(key) <= 60:
        return f"`{prefix}{key}`"
    return f"{_show(key, 60)} (under `{prefix.rstrip('.')}`)" if prefix else _show(key, 60)


def _show(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (hostile files hold huge values)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints beyond Python's digit limit, deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 4] + " ..."
