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

    return wrapper


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
    options = [
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


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--exclude-first N` and `--exclude-special-tokens`: the same positions left out by every
    command that reads a store (`filters_from` makes them a `summary.Filters`)."""
    fn = click.option(
        "--exclude-special-tokens",
        is_flag=True,
        help="Leave out EOS and every special token of the stored tokenizer.",
    )(fn)
    return click.option(
        "--exclude-first", default=0, show_default=True, help="Leave out each answer's first N positions."
    )(fn)  # fmt: skip


def filters_from(exclude_first: int, exclude_special_tokens: bool):
    from tdsdist.analysis.summary import Filters

    try:
        return Filters(exclude_first, exclude_special_tokens)
    except ValueError as e:
        raise TdsError(str(e)) from None


def analysis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filters, the per-position intervals, the category rule and the published metrics,
    shared by `analyze`, `compare` and `figures`."""
    options = [
        click.option(
            "--max-t",
            default=100,
            show_default=True,
            help="Per-position curve up to this t, then one tail bin.",
        ),  # fmt: skip
        click.option(
            "--resamples",
            default=1000,
            show_default=True,
            help="Bootstrap resamples of examples for the 95% intervals.",
        ),  # fmt: skip
        click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap."),
        click.option(
            "--category-by",
            type=click.Choice(["answer", "aligned-top1"]),
            default="answer",
            show_default=True,
            help="Whose base rank makes the categories: the answer token's (tdsdist), or the"
            " aligned model's top 1 (AlignTDS); the same for greedy answers.",
        ),  # fmt: skip
        click.option(
            "--published/--no-published",
            default=True,
            show_default=True,
            help="AlignTDS's top-k metrics as published (stored per position since store format"
            " 3; computed from both top-k lists in older stores, which doubles the time).",
        ),  # fmt: skip
        click.option(
            "--group-by",
            default=None,
            metavar="FIELD",
            help="Every statistic per group of examples: the values of FIELD, an input field the"
            " store kept (score/generate --keep-fields), with intervals and differences.",
        ),  # fmt: skip
    ]
    for option in reversed(options):
        fn = option(fn)
    return filter_options(fn)


def analysis_kwargs(exclude_first, exclude_special_tokens, max_t, resamples, seed, category_by, published, group_by=None) -> dict:  # fmt: skip
    if max_t < 0 or resamples < 1:
        raise TdsError("--max-t must be >= 0 and --resamples >= 1")
    filters = filters_from(exclude_first, exclude_special_tokens)
    return {"filters": filters, "max_t": max_t, "resamples": resamples, "seed": seed, "category_by": category_by, "published": published, "group_by": group_by}  # fmt: skip


def threshold_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--unshifted-max` and `--marginal-max`, as `analyze` has them (for `figures`, `export`)."""
    fn = click.option("--marginal-max", default=3, show_default=True, help="Highest base rank counted marginal.")(fn)  # fmt: skip
    return click.option("--unshifted-max", default=1, show_default=True, help="Highest base rank counted unshifted.")(fn)  # fmt: skip


def thresholds_from(unshifted_max: int, marginal_max: int):
    from tdsdist.analysis.summary import Thresholds

    try:
        return Thresholds(unshifted_max, marginal_max)
    except ValueError as e:
        raise TdsError(str(e)) from None
