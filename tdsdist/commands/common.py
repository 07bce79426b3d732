"""What the subcommands share: one-line user errors, flags derived from config dataclasses,
the analysis options, and the log line."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from tdsdist.errors import TdsError

PREEMPTED_EXIT = 143
"""Exit code after SIGTERM: stopped cleanly, pending units left; re-run to finish (128 + 15)."""


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A `TdsError` becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TdsError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # a full disk, a read-only or immutable folder: the user can fix it
            line = environment_fault(e)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(2)

    return wrapper


def environment_fault(e: OSError) -> str | None:
    """One line for an OS error the user can fix (what to do next), None for any other."""
    import errno

    where = e.filename or "the store"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{where}: no space left on the device (or quota); free space and re-run the same"
            " command: committed units are kept, the rest is scored again"
        )
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"{where}: cannot write here ({e.strerror}: a read-only mount, an immutable folder"
            " or missing permissions); give a writable --store, or make it writable"
        )
    return None


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--config FILE` and one flag per field of the config dataclass `cls` (`options.py`).

    Derived from the fields, so flags, YAML keys and the dataclass cannot drift apart: the type
    gives the click type (`bool` a `--x/--no-x` pair, or a plain flag for a `no_*` field;
    `list[str]` a repeatable flag; `Literal[...]` a choice), the field's docstring the help
    text, followed by the default. Every flag defaults to None: unset flags fall back to the
    file, then to the dataclass.
    """
    from tdsdist.options import base_type, choices, field_docs, option_fields, type_hints

    docs, hints = field_docs(cls), type_hints(cls)
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="YAML file of options (flags override it).",
        )
    ]
    for f in option_fields(cls):
        options.append(_field_option(f, docs.get(f.name, ""), hints[f.name], choices, base_type))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _field_option(
    f: dataclasses.Field[Any],
    help_text: str,
    hint: Any,
    choices: Callable[[Any], tuple[Any, ...] | None],
    base_type: Callable[[Any], Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one field (see `config_options`)."""
    flag = "--" + f.name.replace("_", "-")
    default = None if f.default is dataclasses.MISSING else f.default
    if default not in (None, False, ""):
        help_text += f" [{default}]"
    kind, allowed = base_type(hint), choices(hint)
    if kind is bool:
        decl = flag if f.name.startswith("no_") else f"{flag}/--no-{flag[2:]}"
        return click.option(decl, f.name, is_flag=True, default=None, help=help_text)
    kwargs: dict[str, Any] = {"help": help_text, "default": None}
    if allowed is not None:
        kwargs["type"] = click.Choice(allowed)
    elif kind in (int, float):
        kwargs["type"] = kind
    elif kind == list[str]:
        kwargs["multiple"] = True
        kwargs["default"] = ()
    return click.option(flag, f.name, **kwargs)


def job_config(cls: type, config_file: str | None, flags: dict[str, Any]) -> Any:
    from tdsdist.options import build_config, load_yaml

    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    flags = {k: v for k, v in flags.items() if v != []}  # a repeatable flag not given
    return build_config(load_yaml(config_file, cls) if config_file else {}, flags, cls)


def echo_log(message: str) -> None:
    click.echo(message, err=True)


def print_result(result: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result))


def section_options(*sections: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One flag per field of each section, defaulting to the field's default (for the commands
    that read stores and take no --config): the analysis options are derived as the jobs' are."""
    from tdsdist.options import base_type, choices, field_docs, option_fields, type_hints

    options = []
    for cls in sections:
        docs, hints = field_docs(cls), type_hints(cls)
        for f in option_fields(cls):
            flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
            kwargs: dict[str, Any] = {"default": f.default, "help": docs.get(f.name, "")}
            if base_type(hint) is bool:
                decl = f"{flag}/--no-{flag[2:]}" if f.default else flag
                options.append(
                    click.option(decl, f.name, is_flag=True, show_default=f.default, **kwargs)
                )
                continue
            allowed = choices(hint)
            if allowed is not None:
                kwargs["type"] = click.Choice(allowed)
            elif base_type(hint) in (int, float):
                kwargs["type"] = base_type(hint)
            options.append(click.option(flag, f.name, show_default=f.default is not None, **kwargs))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def section_from(cls: type, flags: dict[str, Any]) -> Any:
    """The section `cls` from the command's flags (its own; the others are left); a bad value is
    one `TdsError` line."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in flags.items() if k in names})
    except ValueError as e:
        raise TdsError(str(e)) from None


def _analysis_sections() -> tuple[type, ...]:
    from tdsdist.analysis_options import Analysis, Filters, Grouping

    return Filters, Analysis, Grouping


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--exclude-first N` and `--exclude-special-tokens` (`summary.Filters`): the same positions
    left out by every command that reads a store."""
    from tdsdist.analysis_options import Filters

    return section_options(Filters)(fn)


def filters_from(**flags: Any) -> Any:
    from tdsdist.analysis_options import Filters

    return section_from(Filters, flags)


def analysis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filters, the per-position intervals, the category rule, the published metrics and
    the grouping (`analysis_options.py`), shared by `analyze`, `compare` and `figures`."""
    return section_options(*_analysis_sections())(fn)


def analysis_kwargs(**flags: Any) -> dict[str, Any]:
    """`summarize`'s keyword arguments from the analysis flags."""
    filters, analysis, grouping = (section_from(c, flags) for c in _analysis_sections())
    return {"filters": filters, **vars(analysis), **vars(grouping)}


def threshold_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--unshifted-max` and `--marginal-max` (`summary.Thresholds`)."""
    from tdsdist.analysis_options import Thresholds

    return section_options(Thresholds)(fn)


def thresholds_from(**flags: Any) -> Any:
    from tdsdist.analysis_options import Thresholds

    return section_from(Thresholds, flags)
