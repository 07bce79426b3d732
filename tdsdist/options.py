"""Option sections: the machinery that derives everything else from typed dataclass fields.

A *section* is a small dataclass for one concern (the model pair, the head, the data...), each
field with its docstring underneath and, in its `metadata`, what the jobs must know about it
(`opt(...)`: fingerprinted, a path, a minimum, required). A job's configuration is a dataclass
that inherits the sections it needs (`class ScoreConfig(ModelPair, Head, ...)`), so every field
stays flat: `config.top_k`, flag `--top-k`, YAML key `top_k`, as before sections existed.

From the fields alone this module derives: the type checks (from `typing.get_type_hints`, real
types, `Literal[...]` for choices), `~` expansion, minimums, the required fields, the docs (the
CLI help), the fingerprinted fields, and the YAML loading and flag merging. `commands/common.py`
derives the click options from the same. A new option is one field in one section.

Why not tyro (torchtitan's choice): the CLI is click, whose commands, groups and `--help` the
project and its tests already use; tyro would replace the parser, and its flags for nested
sections (`--head.top-k`) are not the flat flags users have today. The derivation below is
about a hundred lines over `get_type_hints` and `dataclasses.fields`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tdsdist.errors import TdsError

Fingerprint = Literal["as-is", "template", "unless-default"]
"""How a field enters the fingerprint of what a store's numbers (or generated answers) depend
on: its value `as-is`, a `template`'s fingerprint (its file's contents too), or as is but only
`unless-default` (absent: the default; the way to add a key that older stores lack)."""


def opt(
    *,
    fingerprint: Fingerprint | None = None,
    path: bool = False,
    minimum: int | None = None,
    required: bool = False,
) -> dict[str, Any]:
    """A field's metadata: `fingerprint` (see `Fingerprint`), `path` (a leading `~` is expanded),
    `minimum` (checked when not None), `required` (asked for on the command line or in the file
    even though its default is None, because another field may stand in for it)."""
    meta: dict[str, Any] = {"path": path, "minimum": minimum, "required": required}
    if fingerprint is not None:
        meta["fingerprint"] = fingerprint
    return meta


class Section:
    """Base of every option section and of their compositions.

    `__post_init__` runs the derived checks (types, `~`, minimums), then each section's own
    `check` in the order the composition lists them: one check per section, written once."""

    def __post_init__(self) -> None:
        cls: type = type(self)  # (mypy takes a Section class for a Section: not Hashable)
        hints = type_hints(cls)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("path") and isinstance(value, str) and value.startswith("~"):
                value = os.path.expanduser(value)
                setattr(self, f.name, value)
            check_type(f.name, value, hints[f.name])
            minimum = f.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum)
                kind = kind or f"an integer >= {minimum}"
                raise ValueError(f"{f.name} must be {kind}, got {value!r}")
        for cls in reversed(type(self).__mro__):
            check = cls.__dict__.get("check")
            if check is not None:
                check(self)


@cache
def type_hints(cls: type) -> dict[str, Any]:
    """The fields' real types (resolved across the sections' modules)."""
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a `Literal[...]` (optional or not); None for any other type."""
    hint, _ = _optional(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def base_type(hint: Any) -> Any:
    """`int | None` -> int; `Literal["a"]` -> Literal["a"]; `list[str]` -> list[str]."""
    return _optional(hint)[0]


def check_type(name: str, value: Any, hint: Any) -> None:
    """A YAML `revision: 1234567` is an int, not the string it names, and a quoted
    `overwrite: "no"` is a true string that would delete the store: refuse both."""
    hint, optional = _optional(hint)
    if value is None and optional:
        return
    allowed = choices(hint)
    if allowed is not None:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    elif hint is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r} (quote it in YAML)")
    elif hint is bool and not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    elif hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    elif hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{name} must be a number, got {value!r}")
    elif hint == list[str] and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise ValueError(f"{name} must be a list of strings, got {value!r}")


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields in the order the composition lists its sections (dataclass inheritance lists
    the last base's first): the order of `--help` and of "missing required option(s)"."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    order: list[str] = []
    for klass in [*cls.__mro__[1:], cls]:
        for name in klass.__dict__.get("__annotations__", {}):
            if name in by_name and name not in order:
                order.append(name)
    return [by_name[n] for n in order]


def field_names(cls: type) -> list[str]:
    return [f.name for f in option_fields(cls)]


def required_fields(cls: type) -> tuple[str, ...]:
    """Fields without a default, and those marked `required` (see `opt`)."""
    return tuple(
        f.name
        for f in option_fields(cls)
        if f.metadata.get("required")
        or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    )


def fingerprint_fields(cls: type) -> dict[str, Fingerprint]:
    """Each fingerprinted field of `cls` and how it enters the fingerprint."""
    return {
        f.name: f.metadata["fingerprint"] for f in option_fields(cls) if "fingerprint" in f.metadata
    }


def section_values(config: Any, *sections: type) -> dict[str, Any]:
    """The values of `config`'s fields that belong to `sections` (to build another composition
    of the same sections: `generate --base` scores with its model pair, head, batching...)."""
    names = {f.name for s in sections for f in dataclasses.fields(s)}
    return {n: getattr(config, n) for n in field_names(type(config)) if n in names}


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field, read from the sources of `cls` and its sections (Python
    keeps none at run time); a composition's own docstring for a field, or its `field_help`, wins
    over its section's."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        docs.update(_own_docs(klass))
        docs.update(klass.__dict__.get("field_help", {}))
    return docs


def _own_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def load_yaml(path: Path | str, cls: type) -> dict[str, Any]:
    """A config file's keys, checked against the dataclass (a typo must not be silently ignored)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TdsError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TdsError(
            f"{path}: cannot read the config file ({e.__class__.__name__}: {e})"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise TdsError(f"{path}: invalid YAML{at}: {problem}") from None
    if not isinstance(values, dict):
        raise TdsError(f"{path}: a config file must be a mapping of option names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(field_names(cls)))
    if unknown:
        raise TdsError(f"{path}: unknown option(s): {', '.join(unknown)}")
    # Check the file's values on their own, so that a bad one is reported with the file's name.
    required = {name: "-" for name in required_fields(cls)}
    given = {k: v for k, v in values.items() if not (k in required and v in (None, ""))}
    try:
        cls(**{**required, **given})
    except (TypeError, ValueError) as e:
        raise TdsError(f"{path}: invalid configuration: {e}") from None
    return values


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any], cls: type) -> Any:
    """Merge file and flags (flags win) and validate; a bad value is one `TdsError` line."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    missing = [n for n in required_fields(cls) if merged.get(n) in (None, "")]
    if merged.get("aligned_adapter") and "aligned" in missing:  # the adapter is the aligned model
        missing.remove("aligned")
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise TdsError(f"missing required option(s): {flags} (on the command line or in --config)")
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:
        raise TdsError(f"invalid configuration: {e}") from None
