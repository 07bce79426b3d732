"""The tools must work when they are needed (a GPU lent for minutes): run their code on CPU here.

Tools are modules of the `tools` package, run from the repository root: `python -m tools.gpu.check`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "tools").glob("*/*.py")
    if path.name != "__init__.py"
)


def run_tool(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` from the repository root, as the docstrings say to run them."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(
        cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_starts(module: str) -> None:
    """Each tool imports as a module (no sys.path tricks) and its docstring says how to run it."""
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert f"python -m {module}" in docstring
    text = run_tool(module, "--help", timeout=120).stdout
    assert text.startswith(f"usage: python -m {module} ")


@pytest.mark.parametrize("pair", [False, True], ids=["one model", "pair head"])
def test_gpu_check_runs_tiny_on_cpu(tmp_path: Path, pair: bool) -> None:
    out = tmp_path / "gpu.json"
    run_tool(
        "tools.gpu.check",
        "--tiny",
        "--device",
        "cpu",
        "--sequences",
        "3",
        "--context",
        "8",
        "--answer",
        "16",
        "--repeats",
        "1",
        "--out",
        str(out),
        *(["--pair"] if pair else []),
    )
    report = json.loads(out.read_text())
    assert report["answer_positions"] == 48 and report["pair"] == pair
    for name in ("tdsdist", "bare"):
        assert report[name]["positions_per_second"] > 0 and report[name]["mfu"] > 0
    assert report["tdsdist_over_bare"] > 0


def test_gpu_correctness_passes_on_cpu(tmp_path: Path) -> None:
    """The same checks the GPU run makes, here on the CPU: the engine equals the reference."""
    out = tmp_path / "correct.json"
    run_tool("tools.gpu.correctness", "--device", "cpu", "--out", str(out), timeout=600)
    report = json.loads(out.read_text())
    assert report["passed"] and all(report["passed"].values())
    assert report["attention_misaligned_control"] > 0.1  # the check can tell a wrong mask apart


def test_bench_and_profile_prefix_run_tiny(tmp_path: Path, tiny_pair) -> None:
    from tdsdist.jobs.demo import demo_data_path

    resources = demo_data_path().parent
    urial = next(resources.glob("urial*"))
    out = tmp_path / "prefix.json"
    run_tool(
        "tools.bench.prefix",
        "--random-shape",
        "tiny",
        "--model",
        str(tiny_pair[0]),
        "--data",
        str(demo_data_path()),
        "--urial",
        str(urial),
        "--examples",
        "3",
        "--max-answer",
        "24",
        "--repeats",
        "1",
        "--compare-masked",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    report = json.loads(out.read_text())
    assert report["shared_prefix_tokens"] > 100 and report["prefix_cache_mib"] > 0
    assert set(report["variants"]) == {
        "plain",
        "urial (cached)",
        "urial (recomputed)",
        "urial (cached), masked sdpa",
    }
    assert report["agreement"]["max_abs_logprob_diff"] < 1e-4
    text = run_tool(
        "tools.profile.prefix",
        "--shape",
        "tiny",
        "--batch",
        "2",
        "--prefix",
        "40",
        "--suffix",
        "40",
        "--rows",
        "3",
    ).stdout
    assert "=== plain" in text and "=== cached prefix" in text


def test_bench_memory_runs_its_variants_in_fresh_processes() -> None:
    """The parent starts each variant as `python -m tools.bench.memory --child ...`."""
    text = run_tool(
        "tools.bench.memory",
        "--sequences",
        "2",
        "--context",
        "4",
        "--answer",
        "12",
        "--vocab",
        "2000",
        "--chunk-mib",
        "1",
        "--naive",
        "run",
        "--threads",
        "1",
    ).stdout
    for variant in ("bare body forward", "tdsdist Scorer.score, chunk 1 MiB", "naive:"):
        assert variant in text
    assert "prototype" not in text


def test_bench_serve_runs_tiny(tmp_path: Path, tiny_pair) -> None:
    """The serving benchmark end to end on the tiny pair: a server, its loads, the batch
    commands in their own processes; the server scores exactly the positions `score` scores."""
    out = tmp_path / "serve.json"
    run_tool(
        "tools.bench.serve",
        "--aligned",
        str(tiny_pair[0]),
        "--base",
        str(tiny_pair[1]),
        "--examples",
        "3",
        "--passes",
        "1",
        "--clients",
        "2",
        "--streams",
        "1",
        "2",
        "--gen-tokens",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--answer-chars",
        "60",
        "--out",
        str(out),
        timeout=600,
    )
    report = json.loads(out.read_text())
    assert report["serve_score"]["2"]["positions"] == report["score"]["positions"] > 0
    for streams in ("1", "2"):
        g = report["serve_generate"][streams]
        assert 0 < g["tokens"] <= 4 * int(streams) and g["itl_ms_p99"] >= g["itl_ms_p50"] > 0
    assert set(report["generate"]) == {"1"} and report["generate"]["1"]["tokens_per_s"] > 0
    assert report["server_idle_rss_mib"] > 0 and report["score"]["peak_rss_mib"] > 0
    assert {"score_2_clients_over_score", "lockstep_1_over_aligned_only"} <= set(report["ratios"])
