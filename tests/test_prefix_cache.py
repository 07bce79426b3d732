"""The shared-prefix cache gives what a full recompute gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tdsdist_testkit import default_corpus
from tdsdist_testkit.cli_args import cli_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.cli import main
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.inputs.plan import shared_prefix
from tdsdist.jobs.demo import demo_data_path
from tdsdist.store import Store

K = 6


def test_shared_prefix_is_token_level_and_leaves_one_token() -> None:
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 3, 4, 5]]) == [1, 2, 3]
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]  # equal contexts: all but the last
    assert shared_prefix([[5, 6, 7]]) == [5, 6]  # one example
    assert shared_prefix([[1, 2], [3, 4]]) == []
    assert shared_prefix([[1], [1, 2]]) == []


def compare(scorer: Scorer, seqs: list[ContextAnswer]) -> int:
    scorer.runner.set_prefix([])
    full = scorer.score(seqs)
    prefix = shared_prefix([s.context for s in seqs])
    scorer.runner.set_prefix(prefix)
    cached = scorer.score(seqs)
    np.testing.assert_array_equal(cached["top_ids"], full["top_ids"])
    np.testing.assert_array_equal(cached["rank"], full["rank"])
    for key in ("top_logprobs", "logprob", "entropy"):
        np.testing.assert_allclose(cached[key], full[key], atol=1e-4, rtol=0)
    return len(prefix)


@pytest.fixture(scope="module")
def setup(tiny_pair):
    aligned, _ = tiny_pair
    tok = AutoTokenizer.from_pretrained(aligned)
    model = AutoModelForCausalLM.from_pretrained(aligned).eval()  # sdpa, as in production
    scorer = Scorer.for_model(
        model, len(tok), K, 1 << 20, max_tokens_per_batch=160, device=torch.device("cpu")
    )
    return tok, scorer


def test_prefix_ending_mid_word_batched_different_lengths(setup) -> None:
    tok, scorer = setup
    corpus = default_corpus()
    head = " ".join(corpus[:6])
    cut = head[: len(head) // 2 + 3]  # ends inside a word
    rng = np.random.default_rng(0)
    seqs = []
    for i in range(7):
        ctx = tok(cut + corpus[10 + i][: int(rng.integers(1, 30))], add_special_tokens=True)[
            "input_ids"
        ]
        ans = tok(corpus[40 + i], add_special_tokens=False)["input_ids"][: int(rng.integers(2, 25))]
        seqs.append(ContextAnswer(ctx, ans))
    assert compare(scorer, seqs) > 10


def test_single_example_and_whole_context_prefix(setup) -> None:
    tok, scorer = setup
    ctx = tok("a shared system prompt that is the whole context", add_special_tokens=True)[
        "input_ids"
    ]
    ans = tok(" and then the answer goes on", add_special_tokens=False)["input_ids"]
    assert compare(scorer, [ContextAnswer(ctx, ans)]) == len(ctx) - 1
    # Every context identical: the prefix is the whole context but its last token.
    other = tok(" a different answer", add_special_tokens=False)["input_ids"]
    assert compare(scorer, [ContextAnswer(ctx, ans), ContextAnswer(ctx, other)]) == len(ctx) - 1


def test_urial_run_equals_recompute_and_records_prefix(tiny_pair, tmp_path: Path) -> None:
    aligned, base = tiny_pair
    # The first 1,500 characters of the URIAL prefix: its whole text exceeds the tiny models' window.
    urial = tmp_path / "urial_short.txt"
    urial.write_text((demo_data_path().parent / "urial_inst_1k_v4.txt").read_text()[:1500])
    common = cli_args(
        None,
        aligned,
        base,
        top_k=5,
        limit=4,
        max_output_tokens=30,
        base_template=f"urial:{urial}",
        max_tokens_per_batch=4096,
    )
    runs = {}
    for name, extra in (("cached", []), ("full", ["--no-prefix-cache"])):
        store = tmp_path / f"{name}.zarr"
        result = CliRunner().invoke(main, ["score", *common, "--store", str(store), *extra])
        assert result.exit_code == 0, result.output
        runs[name] = Store(store, mode="r")
    prefix = runs["cached"].meta["shared_prefix_tokens"]
    assert prefix["base"] > 300 and runs["full"].meta["shared_prefix_tokens"]["base"] == 0
    rows = runs["cached"].valid_rows()
    for name in ("aligned/top_ids", "base/top_ids", "aligned/rank", "base/rank"):
        np.testing.assert_array_equal(
            runs["cached"].read(name)[rows], runs["full"].read(name)[rows], err_msg=name
        )
    for name in ("base/logprob", "base/top_logprobs", "positions/kl"):
        np.testing.assert_allclose(
            runs["cached"].read(name)[rows], runs["full"].read(name)[rows], atol=1e-4, err_msg=name
        )
