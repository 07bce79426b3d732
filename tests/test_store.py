"""The store end to end: layout, resumption after a kill, `show --json` and `analyze --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

from tdsdist.cli import main
from tdsdist.jobs.score import FAULT_ENV
from tdsdist.metrics import CATEGORIES, categories, topk_kl
from tdsdist.store import Store, layout

ARRAYS = [
    "positions/token_id",
    "positions/kl",
    "base/logprobs_at_aligned_top",
    *[
        f"{m}/{a}"
        for m in ("aligned", "base")
        for a in ("top_ids", "top_logprobs", "logprob", "rank", "entropy")
    ],
]


def score_args(pair, store: Path, *extra: str) -> list[str]:
    flags = dict(top_k=5, limit=7, unit_size=2, max_output_tokens=40, max_tokens_per_batch=128)
    return cli_args(None, *pair, store=store, **flags, extra=extra)


def run_module(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tdsdist.score", *args],
        capture_output=True,
        text=True,
        env=environment,
    )


def snapshot(store: Path) -> dict[str, np.ndarray]:
    s = Store(store, mode="r")
    return {name: s.read(name) for name in ARRAYS}


def test_layout_units_own_whole_chunks() -> None:
    lengths = np.array([3, 5, 4000, 200, 1, 1, 1])
    offsets, starts = layout(lengths, unit_size=2, chunk=1024)
    # Units [3, 5] -> 1 chunk, [4000, 200] -> 5 chunks, [1, 1] -> 1, [1] -> 1.
    assert starts.tolist() == [0, 1024, 6144, 7168, 8192]
    assert offsets.tolist() == [0, 3, 1024, 5024, 6144, 6145, 7168]
    assert (starts % 1024 == 0).all()


def test_kill_before_commit_then_resume_equals_uninterrupted(tiny_pair, tmp_path: Path) -> None:
    clean, crashed = tmp_path / "clean.zarr", tmp_path / "crashed.zarr"
    assert run_module(score_args(tiny_pair, clean)).returncode == 0
    # SIGKILL after writing the data of the second unit, before its commit flag: the worst moment.
    first = run_module(score_args(tiny_pair, crashed), env={FAULT_ENV: "1"})
    assert first.returncode == -9, first.stderr
    done = Store(crashed, mode="r").committed()
    assert done.tolist() == [True, False, False, False]
    second = run_module(score_args(tiny_pair, crashed))
    assert second.returncode == 0, second.stderr
    assert "1 already committed" in second.stderr
    assert Store(crashed, mode="r").committed().all()
    timing = json.loads(second.stdout.strip().splitlines()[-1])["timing"]
    assert timing["positions"] == sum(Store(crashed).lengths[2:])  # only the three pending units
    expected, got = snapshot(clean), snapshot(crashed)
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # A third run has nothing left to do and changes nothing.
    third = run_module(score_args(tiny_pair, crashed))
    assert json.loads(third.stdout.strip().splitlines()[-1])["timing"]["positions"] == 0


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("scored") / "s.zarr"
    result = CliRunner().invoke(main, ["score", *score_args(tiny_pair, store)])
    assert result.exit_code == 0, result.output
    return store


def test_store_attributes_and_timing(scored: Path) -> None:
    s = Store(scored, mode="r")
    meta = s.meta
    for key in (
        "aligned",
        "base",
        "base_template",
        "aligned_template",
        "top_k",
        "dtype",
        "tokenizer_sha256",
        "data_sha256",
        "tdsdist_version",
    ):
        assert key in meta["fingerprint"], key
    assert set(s.root.attrs["timing"]) == {"load_seconds", "score_seconds", "positions"}
    assert s.root.attrs["timing"]["positions"] == int(s.lengths.sum()) == meta["positions"]
    assert s.ids == [str(i) for i in range(7)]
    assert (
        s.tokenizer().get_vocab()
        == __import__("transformers")
        .AutoTokenizer.from_pretrained(meta["config"]["aligned"])
        .get_vocab()
    )


def test_stored_values_are_consistent(scored: Path) -> None:
    s = Store(scored, mode="r")
    rows = s.valid_rows()
    tokens = s.read("positions/token_id")[rows]
    assert (tokens >= 0).all()
    for model in ("aligned", "base"):
        top_ids = s.read(f"{model}/top_ids")[rows]
        top_lp = s.read(f"{model}/top_logprobs")[rows]
        rank = s.read(f"{model}/rank")[rows]
        logprob = s.read(f"{model}/logprob")[rows]
        assert (np.diff(top_lp, axis=1) <= 0).all()  # best first
        # Where the answer token is in the top-k, its rank is its place there (no ties here).
        hit = top_ids == tokens[:, None]
        where = hit.argmax(1)
        found = hit.any(1)
        assert (rank[found] == where[found] + 1).all()
        np.testing.assert_allclose(logprob[found], top_lp[found, where[found]], atol=1e-6)
        assert (rank[~found] > s.top_k).all()
    kl = topk_kl(s.read("aligned/top_logprobs")[rows], s.read("base/logprobs_at_aligned_top")[rows])
    np.testing.assert_array_equal(kl, s.read("positions/kl")[rows])
    assert (kl >= -1e-6).all()


def test_show_json_schema(scored: Path) -> None:
    result = CliRunner().invoke(main, ["show", str(scored), "--example", "3", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    s = Store(scored, mode="r")
    assert record["id"] == "3"
    assert len(record["positions"]) == s.lengths[3]
    base_rank = s.read("base/rank", s.rows(3))
    for t, p in enumerate(record["positions"]):
        expected = {"t", "token_id", "token", "aligned", "base", "category", "kl", "divergence"}
        assert set(p) == expected | {"base_top1", "published"}
        assert p["t"] == t and isinstance(p["token_id"], int) and isinstance(p["token"], str)
        # The contract tests and tools rely on (issue 11): exact divergences, tie counts.
        assert set(p["divergence"]) == {"kl_aligned_base", "kl_base_aligned", "js", "tv"}
        assert all(isinstance(v, float) and v >= 0 for v in p["divergence"].values())
        assert p["divergence"]["js"] <= np.log(2) + 1e-6 and p["divergence"]["tv"] <= 1
        assert p["divergence"]["kl_aligned_base"] >= p["kl"] - 1e-5  # top-k KL: a lower bound
        assert set(p["base_top1"]) == {
            "token_id",
            "aligned_rank",
            "aligned_logprob",
            "differs_from_aligned_top1",
        }
        assert p["base_top1"]["token_id"] == p["base"]["top_ids"][0]
        for model in ("aligned", "base"):
            m = p[model]
            assert {"logprob", "rank", "top_ids", "top_logprobs", "ties"} <= set(m)
            assert isinstance(m["rank"], int) and isinstance(m["logprob"], float)
            assert isinstance(m["ties"], int) and m["ties"] >= 0
            assert len(m["top_ids"]) == len(m["top_logprobs"]) == 5
            assert all(isinstance(i, int) for i in m["top_ids"])
        assert p["category"] == CATEGORIES[categories(base_rank[t : t + 1])[0]]
        assert isinstance(p["kl"], float)
    text = CliRunner().invoke(main, ["show", str(scored), "--example", "3"])
    assert text.exit_code == 0 and "category" in text.output
    missing = CliRunner().invoke(main, ["show", str(scored), "--example", "nope"])
    assert missing.exit_code == 2 and "nope" in missing.output


def test_analyze_json_counts(scored: Path) -> None:
    result = CliRunner().invoke(main, ["analyze", str(scored), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    s = Store(scored, mode="r")
    ranks = s.read("base/rank")[s.valid_rows()]
    assert summary["examples"] == 7 and summary["positions"] == len(ranks)
    expected = {
        "unshifted": (ranks == 1).sum(),
        "marginal": ((ranks >= 2) & (ranks <= 3)).sum(),
        "shifted": (ranks > 3).sum(),
    }
    for name, count in expected.items():
        assert summary["categories"][name]["count"] == count
        assert summary["categories"][name]["fraction"] == pytest.approx(count / len(ranks))
