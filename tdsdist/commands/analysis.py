"""The commands that read stores: `show`, `analyze`, `compare`, `figures`, `export`, `report`;
they share `analysis_options` (thresholds, filters, intervals, categories), so a statistic
means the same in each."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from tdsdist.analysis_options import Filters, Grouping
from tdsdist.commands.common import (
    analysis_kwargs,
    analysis_options,
    filter_options,
    filters_from,
    section_options,
    threshold_options,
    thresholds_from,
    user_errors,
)


@click.command("show")
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


@click.command("analyze")
@click.argument("store_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@threshold_options
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
    from tdsdist.analysis.summary import summarize
    from tdsdist.analysis.summary_text import render_text
    from tdsdist.store import Store

    thresholds = thresholds_from(unshifted_max=unshifted_max, marginal_max=marginal_max)
    kwargs = analysis_kwargs(**analysis)
    store = Store(store_dir, mode="r")
    summary = summarize(store, thresholds, min_support=min_support, token_rows=token_rows, **kwargs)
    click.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))


@click.command("compare")
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

    result = compare(list(store_dirs), allow_different_data, **analysis_kwargs(**analysis))
    click.echo(json.dumps(result, indent=2) if as_json else render_text(result))


@click.command("figures")
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

    thresholds = thresholds_from(unshifted_max=unshifted_max, marginal_max=marginal_max)
    kwargs = analysis_kwargs(**analysis)
    summaries = [
        summarize(Store(d, mode="r"), thresholds, min_support=min_support, **kwargs)
        for d in store_dirs
    ]
    if kwargs["group_by"]:  # one line per group of each store (the categories, the curves)
        from tdsdist.analysis.groups import group_summaries

        summaries = [g for s in summaries for g in group_summaries(s)]
    options = {
        **analysis,
        "unshifted_max": unshifted_max,
        "marginal_max": marginal_max,
        "min_support": min_support,
    }
    formats = ("png", "svg", "pdf") if pdf else ("png", "svg")
    index = write_figure_folder(summaries, Path(out_dir), options, formats)
    click.echo(f"{Path(out_dir) / 'figures.json'} ({len(index['figures'])} figures)")


@click.command("export")
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
@section_options(Filters, Grouping)
@user_errors
def export_command(
    store_dir: str,
    out_file: str,
    unshifted_max: int,
    marginal_max: int,
    exclude_first: int,
    exclude_special_tokens: bool,
    group_by: str | None,
) -> None:
    """One Parquet row per committed answer position (ids, t, token, both models' statistics,
    divergences, category, the kept input fields); filtered positions are left out."""
    import time

    from tdsdist.analysis.export import export_parquet
    from tdsdist.store import Store

    start = time.perf_counter()
    thresholds = thresholds_from(unshifted_max=unshifted_max, marginal_max=marginal_max)
    filters = filters_from(
        exclude_first=exclude_first, exclude_special_tokens=exclude_special_tokens
    )
    result = export_parquet(Store(store_dir, mode="r"), out_file, thresholds, filters, group_by)
    size = os.path.getsize(out_file) / 1e6
    click.echo(
        f"{out_file}: {result['rows']} rows, {result['row_groups']} row groups,"
        f" {size:.1f} MB, {time.perf_counter() - start:.1f} s"
    )


@click.command("report")
@click.argument("store_dir", type=click.Path())
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the site (new, empty, or an earlier report: replaced).",
)
@filter_options
@user_errors
def report_command(
    store_dir: str, out_dir: str, exclude_first: int, exclude_special_tokens: bool
) -> None:
    """A static HTML report (summary, every example token by token); opens offline from file://.
    Filtered positions are left out of the summary and marked on the example pages."""
    import time
    from pathlib import Path

    from tdsdist.analysis.report import write_report
    from tdsdist.analysis.summary import summarize
    from tdsdist.store import Store

    filters = filters_from(
        exclude_first=exclude_first, exclude_special_tokens=exclude_special_tokens
    )
    start = time.perf_counter()
    store = Store(store_dir, mode="r")
    index = write_report(store, Path(out_dir), summarize(store, filters=filters), filters)
    files = [p for p in index.parent.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    click.echo(
        f"{index} ({len(files)} files, {size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)"
    )
