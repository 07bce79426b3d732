"""The `tdsdist` command line (click): the group and its entry point. The commands live in
`tdsdist/commands/` (jobs, analysis, stores); torch and transformers are imported inside them, so
that `tdsdist --help` and input errors answer at once."""

from __future__ import annotations

import sys

import click

from tdsdist.commands.analysis import (
    analyze_command,
    compare_command,
    export_command,
    figures_command,
    report_command,
    show_command,
)
from tdsdist.commands.common import PREEMPTED_EXIT, user_errors  # noqa: F401  (re-exported)
from tdsdist.commands.jobs import demo_command, generate_command, nudge_command, score_command
from tdsdist.commands.serve import serve_command
from tdsdist.commands.stores import status_command, verify_command

# The commands are re-exported: `python -m tdsdist.score` (and .generate, .nudge, .serve) import
# them from here.
__all__ = [
    "PREEMPTED_EXIT",
    "analyze_command",
    "compare_command",
    "demo_command",
    "entry",
    "export_command",
    "figures_command",
    "generate_command",
    "main",
    "nudge_command",
    "report_command",
    "score_command",
    "serve_command",
    "show_command",
    "status_command",
    "user_errors",
    "verify_command",
]


@click.group()
@click.version_option(package_name="tdsdist")
def main() -> None:
    """Token distribution shift (TDS) between a base and an aligned LLM."""


for _command in (
    score_command,
    generate_command,
    nudge_command,
    show_command,
    analyze_command,
    compare_command,
    figures_command,
    export_command,
    status_command,
    verify_command,
    report_command,
    demo_command,
    serve_command,
):
    main.add_command(_command)


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
