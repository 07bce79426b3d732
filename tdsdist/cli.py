"""The `tdsdist` command line (click). Imports of torch and transformers stay inside commands so
that `tdsdist --help` and input errors answer at once."""

from __future__ import annotations

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


@click.group()
@click.version_option(package_name="tdsdist")
def main() -> None:
    """Token distribution shift (TDS) between a base and an aligned LLM."""


def score_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The flags of `score`, one per `ScoreConfig` field; unset flags fall back to --config."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="YAML file of options (flags override it).",
        ),
        click.option("--aligned", help="Aligned model: hub id or local folder."),
        click.option("--base", help="Base model: hub id or local folder."),
        click.option("--data", help="Aligned answers: just-eval JSON list or JSONL."),
        click.option("--store", help="Output Zarr store (folder)."),
        click.option("--top-k", type=int, help="Candidates kept per position [20]."),
        click.option("--base-template", help="plain | urial:FILE | none | JINJA_FILE [plain]."),
        click.option("--aligned-template", type=click.Choice(["input", "chat"]), help="[input]"),
        click.option("--max-output-tokens", type=int, help="Cut answers to N tokens (flagged)."),
        click.option("--limit", type=int, help="Score only the first N examples."),
        click.option("--unit-size", type=int, help="Examples per work unit [32]."),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
            help="[float32]",
        ),
        click.option("--device", help="auto | cpu | cuda | cuda:N [auto]."),
        click.option("--max-tokens-per-batch", type=int, help="Token budget per forward [8192]."),
        click.option("--logits-chunk-mib", type=int, help="Memory for one chunk of logits [64]."),
        click.option(
            "--truncate-context/--no-truncate-context",
            default=None,
            help="Cut long contexts from the left.",
        ),
        click.option("--overwrite/--no-overwrite", default=None, help="Start the store over."),
        click.option(
            "--skip-empty-answers",
            is_flag=True,
            default=None,
            help="Leave out examples with an empty answer instead of refusing the file.",
        ),
        click.option(
            "--no-prefix-cache",
            is_flag=True,
            default=None,
            help="Do not cache the contexts' shared prefix.",
        ),
        click.option(
            "--trust-remote-code/--no-trust-remote-code",
            default=None,
            help="Run model code from the hub.",
        ),
        click.option("--aligned-revision", help="Hub revision of the aligned model."),
        click.option("--base-revision", help="Hub revision of the base model."),
        click.option("--tp", type=int, help="Tensor-parallel size under torchrun [1]."),
        click.option("--task-index", type=int, help="Array task index [SLURM_ARRAY_TASK_ID]."),
        click.option(
            "--task-count", type=int, help="Array tasks sharing the store [SLURM_ARRAY_TASK_COUNT]."
        ),
        click.option(
            "--dist-timeout", type=int, help="Seconds a collective waits for a peer [600]."
        ),
        click.option("--id-field", help="[id]"),
        click.option("--instruction-field", help="[pure_input]"),
        click.option("--input-field", help="[input]"),
        click.option("--output-field", help="[output]"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command("score")
@score_options
@user_errors
def score_command(config_file: str | None, **flags: Any) -> None:
    """Score the aligned answers under both models into a Zarr store (resumes if it exists)."""
    from tdsdist.config import build_config, load_yaml
    from tdsdist.jobs.score import run_score

    file_values = load_yaml(config_file) if config_file else {}
    config = build_config(file_values, flags)
    timing = run_score(config, log=lambda m: click.echo(m, err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps({"timing": timing}))
    if timing.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@main.command("generate")
@click.option("--aligned", required=True, help="Aligned model: hub id or local folder.")
@click.option(
    "--data", required=True, help="Prompts: just-eval JSON/JSONL or a JSON list of instructions."
)
@click.option(
    "--out", required=True, help="Answers file to write (just-eval JSON, read by `score`)."
)
@click.option("--store", default=None, help="Also record the aligned model's distributions here.")
@click.option(
    "--aligned-template", type=click.Choice(["chat", "input"]), default="chat", show_default=True
)
@click.option("--max-new-tokens", default=512, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--top-k", default=20, show_default=True, help="Candidates recorded per position.")
@click.option("--limit", type=int, default=None)
@click.option("--unit-size", default=32, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
    default="float32",
    show_default=True,
)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--aligned-revision", default=None)
@user_errors
def generate_command(stop: tuple[str, ...], **options: Any) -> None:
    """The aligned model writes its answers (and, with --store, records its distributions)."""
    from tdsdist.jobs.generate import GenerateConfig, run_generate

    try:
        config = GenerateConfig(stop=list(stop), **options)
    except ValueError as e:
        raise TdsError(f"invalid configuration: {e}") from None
    result = run_generate(config, log=lambda m: click.echo(m, err=True))
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(result))


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
@user_errors
def analyze_command(
    store_dir: str, as_json: bool, unshifted_max: int, marginal_max: int, min_support: int
) -> None:
    """Summary statistics of a store: categories, rank histogram, KL, position curves, tokens."""
    from tdsdist.analysis.summary import Thresholds, render_text, summarize
    from tdsdist.store import Store

    try:
        thresholds = Thresholds(unshifted_max, marginal_max)
    except ValueError as e:
        raise TdsError(str(e)) from None
    summary = summarize(Store(store_dir, mode="r"), thresholds, min_support=min_support)
    click.echo(json.dumps(summary, indent=2) if as_json else render_text(summary))


@main.command("compare")
@click.argument("store_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--allow-different-data", is_flag=True, help="Compare stores scored on different data."
)
@user_errors
def compare_command(store_dirs: tuple[str, ...], as_json: bool, allow_different_data: bool) -> None:
    """Statistics of several stores side by side (e.g. plain vs urial: templates)."""
    from tdsdist.analysis.compare import compare, render_text

    result = compare(list(store_dirs), allow_different_data)
    click.echo(json.dumps(result, indent=2) if as_json else render_text(result))


@main.command("status")
@click.argument("store_dir", type=click.Path())
@click.option(
    "--task-count", type=int, default=None, help="Show the share of each of N array tasks."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def status_command(store_dir: str, task_count: int | None, as_json: bool) -> None:
    """Units done and pending (per array task with --task-count)."""
    from tdsdist.store import Store

    store = Store(store_dir, mode="r")
    done = store.committed()
    report: dict[str, Any] = {
        "units": len(done),
        "done": int(done.sum()),
        "pending": int((~done).sum()),
    }
    if task_count:
        report["tasks"] = [
            {
                "task": t,
                "done": int(done[t::task_count].sum()),
                "pending": int((~done[t::task_count]).sum()),
            }
            for t in range(task_count)
        ]
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{store.path}: {report['done']} of {report['units']} units done, {report['pending']} pending"
    )
    for t in report.get("tasks", []):
        click.echo(f"  task {t['task']}: {t['done']} done, {t['pending']} pending")


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
@user_errors
def report_command(store_dir: str, out_dir: str) -> None:
    """A static HTML report (summary, every example token by token); opens offline from file://."""
    import time
    from pathlib import Path

    from tdsdist.analysis.report import write_report
    from tdsdist.analysis.summary import summarize
    from tdsdist.store import Store

    start = time.perf_counter()
    store = Store(store_dir, mode="r")
    index = write_report(store, Path(out_dir), summarize(store))
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
