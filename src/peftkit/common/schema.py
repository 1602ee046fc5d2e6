"""The typed-schema machinery behind every config dataclass: attribute docstrings for ``--help``,
resolved type hints, text converted to the field's type, and type checks that record every problem
instead of raising at the first (the reason this is written here rather than taken from a
dataclass-to-CLI library: see cli.py)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
import types
import typing
from typing import Any, get_type_hints

from ..errors import did_you_mean
from ..errors import short_repr as _short

__all__ = [
    "choice",
    "coerce",
    "field_docs",
    "field_types",
    "flag",
    "fraction",
    "is_int",
    "is_number",
    "positive",
    "split_size",
    "typecheck",
]


def is_int(value: Any) -> bool:
    """A whole number that is not a bool (``True`` is an int to Python, not a rank to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real, finite number: NaN and infinity pass every comparison test silently, so they are
    refused here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the attribute-docstring convention), for
    ``--help``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value.strip()
    return docs


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass."""
    return get_type_hints(cls)


def typecheck(obj: Any, prefix: str, problems: list[str], skip: tuple[str, ...] = ()) -> None:
    """Record a problem for each field whose value is not of its declared type, and put the default
    back so later checks see a sane value."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or _matches(value, hints[f.name]):
            continue
        problems.append(f"{prefix}{f.name}={_short(value)} must be {_describe(hints[f.name])}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        setattr(obj, f.name, default)


def _matches(value: Any, hint: Any) -> bool:
    for kind in (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    ):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if (
            kind is Any
            or (kind is type(None) and value is None)
            or (kind is bool and isinstance(value, bool))
        ):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if (
            kind is float
            and is_number(value)
            and (not isinstance(value, float) or math.isfinite(value))
        ):
            return True
        if kind is str and isinstance(value, str):
            return True
        if origin is list and isinstance(value, list) and all(_matches(v, args[0]) for v in value):
            return True
        if origin is dict and isinstance(value, dict):
            return True
    return False


def _describe(hint: Any) -> str:
    names = {
        str: "text",
        int: "a whole number",
        float: "a finite number",
        bool: "true or false",
        type(None): "empty",
    }
    kinds = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    words = [
        names.get(k) or ("a list" if typing.get_origin(k) is list else "a mapping") for k in kinds
    ]
    return " or ".join(dict.fromkeys(words))


def coerce(value: Any, hint: Any) -> Any:
    """Turn text into the field's scalar type where that is unambiguous.

    YAML reads ``1e-4`` as a string and flags are all strings; ``"1e-4"`` for a float field becomes
    1e-4. Anything that does not convert is left alone for validation to report.
    """
    args = (
        set(typing.get_args(hint))
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else {hint}
    )
    if isinstance(value, dict):  # {name: value} fields such as rank_pattern: coerce the values
        inner = [
            typing.get_args(a)[1]
            for a in args
            if typing.get_origin(a) is dict and typing.get_args(a)
        ]
        return {k: coerce(v, inner[0]) for k, v in value.items()} if inner else value
    # flags with several values: coerce the items of list[int] and the like
    if isinstance(value, list):
        inner = [
            typing.get_args(a)[0]
            for a in args
            if typing.get_origin(a) is list and typing.get_args(a)
        ]
        return [coerce(v, inner[0]) for v in value] if inner else value
    if not isinstance(value, str):
        return value
    text = value.strip()
    if type(None) in args and text.lower() in ("", "none", "null", "~"):
        return None
    if bool in args and text.lower() in ("true", "false", "yes", "no", "on", "off"):
        return text.lower() in ("true", "yes", "on")
    for kind in (int, float):
        if kind in args:
            try:
                return kind(text)
            except ValueError:
                continue
    return value


def positive(
    problems: list[str], name: str, value: Any, *, integer: bool = False, hint: str = ""
) -> None:
    """Record a problem unless ``value`` is a number > 0 (a whole one when ``integer``); ``hint``
    says what to try."""
    ok = is_int(value) if integer else is_number(value)
    if not ok or value <= 0:
        kind = "a whole number" if integer else "a number"
        problems.append(
            f"{name}={_short(value)} must be {kind} > 0" + (f" ({hint})" if hint else "")
        )


def fraction(problems: list[str], name: str, value: Any) -> None:
    """Record a problem unless ``value`` is a number in [0, 1) (a dropout rate, a share)."""
    if not is_number(value) or not 0.0 <= value < 1.0:
        problems.append(f"{name}={_short(value)} must be a number in [0, 1)")


def flag(problems: list[str], name: str, value: Any) -> None:
    """Record a problem unless ``value`` is a bool (``"yes"`` or 1 would silently mean true)."""
    if not isinstance(value, bool):
        problems.append(f"{name}={_short(value)} must be true or false")


def split_size(problems: list[str], name: str, value: Any, zero: bool = True) -> None:
    """A split's size: a share of the rows in [0, 1) (``(0, 1)`` when ``zero`` is not allowed) or a
    whole count."""
    low = "[0, 1)" if zero else "(0, 1)"
    if not is_number(value) or value < 0 or (value == 0 and not zero) or (value >= 1 and value % 1):
        problems.append(
            f"{name}={_short(value)} must be a share of the rows in {low} or a whole count of rows"
        )


def choice(problems: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Record a problem, with the nearest allowed value, unless ``value`` is one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        problems.append(
            f"{name}={_short(value)} is not allowed; expected one of {', '.join(allowed)}."
            f"{did_you_mean(str(value), allowed)}"
        )
