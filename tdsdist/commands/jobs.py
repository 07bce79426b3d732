"""The job commands: `score`, `generate`, `nudge` (their flags derived from the config dataclasses) and
`demo`. Torch and transformers are imported inside each, so `--help` answers at once."""

from __future__ import annotations

import sys
from typing import Any

import click

from tdsdist.commands.common import (
    PREEMPTED_EXIT,
    config_options,
    echo_log,
    job_config,
    print_result,
    user_errors,
)
from tdsdist.config import GenerateConfig, NudgeConfig, ScoreConfig
from tdsdist.errors import TdsError


@click.command("score")
@config_options(ScoreConfig)
@user_errors
def score_command(config_file: str | None, **flags: Any) -> None:
    """Score the aligned answers under both models into a Zarr store (resumes if it exists)."""
    from tdsdist.jobs.score import run_score

    timing = run_score(job_config(ScoreConfig, config_file, flags), log=echo_log)
    print_result({"timing": timing})
    if timing.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@click.command("generate")
@config_options(GenerateConfig)
@user_errors
def generate_command(config_file: str | None, **flags: Any) -> None:
    """The aligned model writes its answers (and, with --store, records its distributions)."""
    from tdsdist.jobs.generate import run_generate

    result = run_generate(job_config(GenerateConfig, config_file, flags), log=echo_log)
    print_result(result)
    if result.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@click.command("nudge")
@config_options(NudgeConfig)
@user_errors
def nudge_command(config_file: str | None, **flags: Any) -> None:
    """The base model writes; the aligned model chooses where the rule fires (Fei et al. 2025's
    nudging). Answers file and a complete store, with which model chose each token."""
    from tdsdist.jobs.nudge import run_nudge

    result = run_nudge(job_config(NudgeConfig, config_file, flags), log=echo_log)
    print_result(result)
    if result.get("stopped"):
        sys.exit(PREEMPTED_EXIT)


@click.command("demo")
@click.option("--store", default="tdsdist-demo.zarr", show_default=True, help="Output store.")
@click.option("--limit", default=20, show_default=True, help="Examples to score.")
@click.option(
    "--data", default=None, help="Answers file [the first 20 just-eval examples, shipped]."
)
@click.option("--max-output-tokens", type=int, default=None, help="Cut answers to N tokens.")
@click.option("--report", default=None, help="Report folder [the store's name + -report].")
@click.option("--serve", is_flag=True, help="Serve the demo pair (`tdsdist serve`).")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve: address.")
@click.option("--port", default=8000, show_default=True, help="With --serve: TCP port.")
@user_errors
def demo_command(
    store: str,
    limit: int,
    data: str | None,
    max_output_tokens: int | None,
    report: str | None,
    serve: bool,
    host: str,
    port: int,
) -> None:
    """The whole path on a real small model (SmolLM2-135M-Instruct from PyPI), offline."""
    from tdsdist.jobs.demo import run_demo, serve_demo

    if serve:
        try:
            serve_demo(host, port, click.echo)
        except ValueError as e:  # a non-loopback host without $TDSDIST_API_KEY
            raise TdsError(str(e)) from None
        return
    run_demo(store, limit, data, max_output_tokens, click.echo, report)
