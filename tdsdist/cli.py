"""The `tdsdist` command line (click). Imports of torch and transformers stay inside commands so
that `tdsdist --help` and input errors answer at once."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from tdsdist.config import GenerateConfig, ScoreConfig
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


@click.group()
@click.version_option(package_name="tdsdist")
def main() -> None:
    """Token distribution shift (TDS) between a base and an aligned LLM."""


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--config FILE` and one flag per field of the config dataclass `cls`.

    Derived from the fields, so flags, YAML keys and the dataclass cannot drift apart: the type
    gives the click type (`bool` a `--x/--no-x` pair, or a plain flag for a `no_*` field;
    `list[str]` a repeatable flag), `metadata["choices"]` a choice, the field's docstring the help
    text, followed by the default. Every flag defaults to None: unset flags fall back to the
    file, then to the dataclass.
    """
    from tdsdist.config import field_docs

    docs = field_docs(cls)
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="YAML file of options (flags override it).",
        )
    ]
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        default = None if f.default is dataclasses.MISSING else f.default
        if default not in (None, False, ""):
            help_text += f" [{default}]"
        kind = str(f.type).removesuffix(" | None")
        kwargs: dict[str, Any] = {"help": help_text, "default": None}
        if kind == "bool":
            decl = flag if f.name.startswith("no_") else f"{flag}/--no-{flag[2:]}"
            options.append(click.option(decl, f.name, is_flag=True, default=None, help=help_text))
            continue
        if "choices" in f.metadata:
            kwargs["type"] = click.Choice(f.metadata["choices"])
        elif kind in ("int", "float"):
            kwargs["type"] = {"int": int, "float": float}[kind]
        elif kind == "list[str]":
            kwargs["multiple"] = True
            kwargs["default"] = ()
        options.append(click.option(flag, f.name, **kwargs))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _config(cls: type, config_file: str | None, flags: dict[str, Any]) -> Any:
    from tdsdist.config import build_config, load_yaml

    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()}
    flags = {k: v for k, v in flags.items() if v != []}  # a repeatable flag not given
    return build_config(load_yaml(config_file, cls) if config_file else {}, flags, cls)


def _log(message: str) -> None:
    click.echo(message, err=True)


def _print_result(result: dict[str, Any]) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result))


@main.command("score")
@config_options(ScoreConfig)
@user_errors
def score_command(config_file: str | None, **flags: Any) -> None:
    """Score the aligned answers under both models into a Zarr store (resumes if it exists)."""
    from tdsdist.jobs.score import run_score

    timing = run_score(_config(ScoreConfig, config_file, flags), log=_log)
    _print_result({"timing": timing})
    if timing.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@main.command("generate")
@config_options(GenerateConfig)
@user_errors
def generate_command(config_file: str | None, **flags: Any) -> None:
    """The aligned model writes its answers (and, with --store, records its distributions)."""
    from tdsdist.jobs.generate import run_generate

    result = run_generate(_config(GenerateConfig, config_file, flags), log=_log)
    _print_result(result)
    if result.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@main.command("show")
@click.argument("store_dir", type=click.Path())
@click.option("--example", "example_id", required=True, help="Example id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def show_command(store_dir: str, example_id: str, as_json: bool) -> None:
    """One example, position by position."""
    from tdsdist.analysis.show import example_record, render_text
    from tdsdist.store import Store

    record = example_record(Store(store_dir, mode="r"), example_id)
    click.echo(json.dumps(record, ensure_ascii=False) if as_json else render_text(record))


def analysis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The filters and the per-position intervals, shared by `analyze` and `compare`."""
    options = [
        click.option(
            "--exclude-first",
            default=0,
            show_default=True,
            help="Leave out each answer's first N positions.",
        ),  # fmt: skip
        click.option(
            "--exclude-special-tokens",
            is_flag=True,
            help="Leave out EOS and every special token of the stored tokenizer.",
        ),  # fmt: skip
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
            help="AlignTDS's top-k metrics as published (they read both top-k lists: about half"
            " the time of the analysis).",
        ),  # fmt: skip
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _analysis_kwargs(exclude_first, exclude_special_tokens, max_t, resamples, seed, category_by, published) -> dict:  # fmt: skip
    from tdsdist.analysis.summary import Filters

    if max_t < 0 or resamples < 1:
        raise TdsError("--max-t must be >= 0 and --resamples >= 1")
    try:
        filters = Filters(exclude_first, exclude_special_tokens)
    except ValueError as e:
        raise TdsError(str(e)) from None
    return {"filters": filters, "max_t": max_t, "resamples": resamples, "seed": seed, "category_by": category_by, "published": published}  # fmt: skip


@main.command("analyze")
@click.argument("store_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--unshifted-max", default=1, show_default=True, help="Highest base rank counted unshifted."
)
@click.option(
    "--marginal-max", default=3, show_default=True, help="Highest base rank counted marginal."
)
@click.option(
    "--min-support", default=5, show_default=True, help="Occurrences a token needs to be listed."
)
@click.option(
    "--token-rows", default=50, show_default=True, help="Rows of each token table (JSON)."
)
@analysis_options
@user_errors
def analyze_command(
    store_dir: str,
    as_json: bool,
    unshifted_max: int,
    marginal_max: int,
    min_support: int,
    token_rows: int,
    **analysis: Any,
) -> None:
    """Summary statistics of a store: categories with 95% intervals, per-position curves, rank
    histogram, divergences, tokens."""
    from tdsdist.analysis.summary import Thresholds, render_text, summarize
    from tdsdist.store import Store

    try:
        thresholds = Thresholds(unshifted_max, marginal_max)
    except ValueError as e:
        raise TdsError(str(e)) from None
    kwargs = _analysis_kwargs(**analysis)
    store = Store(store_dir, mode="r")
    summary = summarize(store, thresholds, min_support=min_support, token_rows=token_rows, **kwargs)
    click.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))


@main.command("compare")
@click.argument("store_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--allow-different-data", is_flag=True, help="Compare stores scored on different data."
)
@analysis_options
@user_errors
def compare_command(
    store_dirs: tuple[str, ...], as_json: bool, allow_different_data: bool, **analysis: Any
) -> None:
    """Statistics of several stores side by side (e.g. plain vs urial: templates)."""
    from tdsdist.analysis.compare import compare, render_text

    result = compare(list(store_dirs), allow_different_data, **_analysis_kwargs(**analysis))
    click.echo(json.dumps(result, indent=2) if as_json else render_text(result))


def threshold_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--unshifted-max` and `--marginal-max`, as `analyze` has them (for `figures`, `export`)."""
    fn = click.option("--marginal-max", default=3, show_default=True, help="Highest base rank counted marginal.")(fn)  # fmt: skip
    return click.option("--unshifted-max", default=1, show_default=True, help="Highest base rank counted unshifted.")(fn)  # fmt: skip


def _thresholds(unshifted_max: int, marginal_max: int):
    from tdsdist.analysis.summary import Thresholds

    try:
        return Thresholds(unshifted_max, marginal_max)
    except ValueError as e:
        raise TdsError(str(e)) from None


@main.command("figures")
@click.argument("store_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the figures (new, empty, or an earlier figures folder: replaced).",
)
@click.option("--pdf", is_flag=True, help="Write PDF too (PNG and SVG always).")
@threshold_options
@click.option(
    "--min-support", default=5, show_default=True, help="Occurrences a token needs to be listed."
)
@analysis_options
@user_errors
def figures_command(
    store_dirs: tuple[str, ...],
    out_dir: str,
    pdf: bool,
    unshifted_max: int,
    marginal_max: int,
    min_support: int,
    **analysis: Any,
) -> None:
    """Publication figures (PNG, SVG) of one or more stores, overlaid: categories, shift and
    divergence by token position, base-rank histogram, most shifted tokens."""
    from pathlib import Path

    from tdsdist.analysis.figures import write_figure_folder
    from tdsdist.analysis.summary import summarize
    from tdsdist.store import Store

    thresholds = _thresholds(unshifted_max, marginal_max)
    kwargs = _analysis_kwargs(**analysis)
    summaries = [
        summarize(Store(d, mode="r"), thresholds, min_support=min_support, **kwargs)
        for d in store_dirs
    ]
    options = {
        **analysis,
        "unshifted_max": unshifted_max,
        "marginal_max": marginal_max,
        "min_support": min_support,
    }
    formats = ("png", "svg", "pdf") if pdf else ("png", "svg")
    index = write_figure_folder(summaries, Path(out_dir), options, formats)
    click.echo(f"{Path(out_dir) / 'figures.json'} ({len(index['figures'])} figures)")


@main.command("export")
@click.argument("store_dir", type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="Parquet file (replaced once the new one is complete).",
)
@threshold_options
@click.option(
    "--exclude-first", default=0, show_default=True, help="Leave out each answer's first N positions."
)  # fmt: skip
@click.option(
    "--exclude-special-tokens",
    is_flag=True,
    help="Leave out EOS and every special token of the stored tokenizer.",
)
@user_errors
def export_command(
    store_dir: str,
    out_file: str,
    unshifted_max: int,
    marginal_max: int,
    exclude_first: int,
    exclude_special_tokens: bool,
) -> None:
    """One Parquet row per committed answer position (ids, t, token, both models' statistics,
    divergences, category); filtered positions are left out."""
    import time

    from tdsdist.analysis.export import export_parquet
    from tdsdist.analysis.summary import Filters
    from tdsdist.store import Store

    start = time.perf_counter()
    thresholds = _thresholds(unshifted_max, marginal_max)
    try:
        filters = Filters(exclude_first, exclude_special_tokens)
    except ValueError as e:
        raise TdsError(str(e)) from None
    result = export_parquet(Store(store_dir, mode="r"), out_file, thresholds, filters)
    size = os.path.getsize(out_file) / 1e6
    click.echo(
        f"{out_file}: {result['rows']} rows, {result['row_groups']} row groups,"
        f" {size:.1f} MB, {time.perf_counter() - start:.1f} s"
    )


@main.command("status")
@click.argument("store_dir", type=click.Path())
@click.option(
    "--task-count", type=int, default=None, help="Show the share of each of N array tasks."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def status_command(store_dir: str, task_count: int | None, as_json: bool) -> None:
    """Units done and pending (per array task with --task-count)."""
    import numpy as np

    from tdsdist.store import Store

    store = Store(store_dir, mode="r")
    done = store.committed()
    report: dict[str, Any] = {
        "units": len(done),
        "done": int(done.sum()),
        "pending": int((~done).sum()),
    }
    if task_count:
        from tdsdist.units import in_task_share

        report["tasks"] = []
        for t in range(task_count):
            share = np.array([in_task_share(u, t, task_count) for u in range(len(done))], bool)
            report["tasks"].append(
                {"task": t, "done": int(done[share].sum()), "pending": int((~done[share]).sum())}
            )
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{store.path}: {report['done']} of {report['units']} units done, {report['pending']} pending"
    )
    for t in report.get("tasks", []):
        click.echo(f"  task {t['task']}: {t['done']} done, {t['pending']} pending")


@main.command("verify")
@click.argument("store_dir", type=click.Path())
@click.option(
    "--repair", is_flag=True, help="Mark damaged units pending: the same `score` re-scores them."
)
@user_errors
def verify_command(store_dir: str, repair: bool) -> None:
    """Read every committed unit and list the damaged ones (chunks failing their checksum)."""
    from tdsdist.integrity import damaged_contexts, damaged_units
    from tdsdist.store import Store

    store = Store(store_dir, mode="r+" if repair else "r")
    if store.format_version < 2:
        raise TdsError(f"{store.path}: a store of format 1 (tdsdist 0.1.0) has no checksums")
    damaged = damaged_units(store)
    contexts = damaged_contexts(store)
    done = int(store.committed().sum())
    for unit, names in sorted(damaged.items()):
        click.echo(f"unit {unit}: damaged {', '.join(names)}")
    for name in contexts:
        click.echo(
            f"{name}: damaged (written once with the store: restore it from a copy; the scores do not depend on it)"
        )
    if repair:
        for unit in damaged:
            store.mark_pending(unit)
    if contexts and not damaged:
        sys.exit(1)
    if not damaged:
        click.echo(f"{store.path}: {done} committed units read, none damaged")
        return
    what = "marked pending: re-run the same `score` command" if repair else "use --repair"
    click.echo(f"{store.path}: {len(damaged)} of {done} committed units damaged ({what})")
    if not repair:
        sys.exit(1)


@main.command("report")
@click.argument("store_dir", type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the site (new, empty, or an earlier report: replaced).",
)
@click.option(
    "--exclude-first",
    default=0,
    show_default=True,
    help="Leave out each answer's first N positions (as analyze; marked on the example pages).",
)
@click.option(
    "--exclude-special-tokens",
    is_flag=True,
    help="Leave out EOS and every special token of the stored tokenizer (as analyze).",
)
@user_errors
def report_command(
    store_dir: str, out_dir: str, exclude_first: int, exclude_special_tokens: bool
) -> None:
    """A static HTML report (summary, every example token by token); opens offline from file://."""
    import time
    from pathlib import Path

    from tdsdist.analysis.report import write_report
    from tdsdist.analysis.summary import Filters, summarize
    from tdsdist.store import Store

    try:
        filters = Filters(exclude_first, exclude_special_tokens)
    except ValueError as e:
        raise TdsError(str(e)) from None
    start = time.perf_counter()
    store = Store(store_dir, mode="r")
    index = write_report(store, Path(out_dir), summarize(store, filters=filters), filters)
    files = [p for p in index.parent.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    click.echo(
        f"{index} ({len(files)} files, {size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)"
    )


@main.command("demo")
@click.option("--store", default="tdsdist-demo.zarr", show_default=True, help="Output store.")
@click.option("--limit", default=20, show_default=True, help="Examples to score.")
@click.option(
    "--data", default=None, help="Answers file [the first 20 just-eval examples, shipped]."
)
@click.option("--max-output-tokens", type=int, default=None, help="Cut answers to N tokens.")
@click.option("--report", default=None, help="Report folder [the store's name + -report].")
@user_errors
def demo_command(
    store: str, limit: int, data: str | None, max_output_tokens: int | None, report: str | None
) -> None:
    """The whole path on a real small model (SmolLM2-135M-Instruct from PyPI), offline."""
    from tdsdist.jobs.demo import run_demo

    run_demo(store, limit, data, max_output_tokens, click.echo, report)


def entry(command: click.Command = main, prog_name: str | None = None) -> None:
    """Console entry point: click's own usage errors become the same one `error:` line, exit 2."""
    try:
        command.main(prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see --help)", err=True)
        sys.exit(2)


if __name__ == "__main__":
    entry()
