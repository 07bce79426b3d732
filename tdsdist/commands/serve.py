"""`tdsdist serve`: its flags derived from `ServeConfig` (score's model options plus the
service's). Torch, transformers and the ASGI stack are imported inside, so `--help` answers at once."""

from __future__ import annotations

from typing import Any

import click

from tdsdist.commands.common import config_options, echo_log, job_config, user_errors
from tdsdist.serve.config import ServeConfig


@click.command("serve")
@config_options(ServeConfig)
@user_errors
def serve_command(config_file: str | None, **flags: Any) -> None:
    """Keep the pair loaded and serve /v1/score and /v1/generate over HTTP (see docs/serve.md)."""
    from tdsdist.serve.run import run_serve

    run_serve(job_config(ServeConfig, config_file, flags), log=echo_log)
