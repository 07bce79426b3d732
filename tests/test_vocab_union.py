"""An aligned vocabulary that appends tokens to the base one, scored over the union.

The pair: the tiny 301-token tokenizer and a base model for it; the aligned tokenizer is the same
plus two appended special tokens (ids 301 and 302, as a chat model's `<|im_end|>` and a pad), and
the aligned model's embeddings and LM head are resized to 303 rows (the new rows random, so the
appended ids take visible probability). Checked against float64 references with the base logits
padded with -inf on the appended ids: ranks, log-probabilities, top-k, JS, TV, KL(base || aligned)
per position, KL(aligned || base) = +inf and never NaN; the refusal of any other mismatch; the
tokenizer each part of the plan uses; the store's meta and the analysis headline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tdsdist_testkit import (
    LOGIT_SCALE,
    assert_answers_match,
    assert_float32_close,
    assert_pair_arrays,
    default_corpus,
    make_tiny_llama,
    train_tiny_tokenizer,
)
from tdsdist_testkit.cli_args import cli_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.cli import main
from tdsdist.config import ScoreConfig
from tdsdist.engine.pair_head import pair_positions
from tdsdist.engine.reference import logits_pair_reference, per_token_pair_reference
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, PairScorer
from tdsdist.errors import TdsError
from tdsdist.inputs.tokenizer import VocabularyUnion, compare_vocabularies
from tdsdist.jobs.prepare import prepare
from tdsdist.store import Store

V_BASE = 301
APPENDED = ("<|im_end|>", "<|pad_extra|>")
V_UNION = V_BASE + len(APPENDED)


def save_union_pair(root: Path) -> tuple[Path, Path]:
    """(aligned, base) folders: the aligned tokenizer and model extend the base ones."""
    base_tok = train_tiny_tokenizer(default_corpus(), V_BASE)
    aligned_dir, base_dir = root / "aligned", root / "base"
    make_tiny_llama(base_tok, seed=1).save_pretrained(base_dir)
    base_tok.save_pretrained(base_dir)
    aligned_tok = AutoTokenizer.from_pretrained(base_dir)
    aligned_tok.add_tokens(list(APPENDED), special_tokens=True)
    assert [aligned_tok.convert_tokens_to_ids(t) for t in APPENDED] == [301, 302]
    model = make_tiny_llama(base_tok, seed=0)
    model.resize_token_embeddings(V_UNION)
    gen = torch.Generator().manual_seed(5)
    std = LOGIT_SCALE / model.config.hidden_size**0.5
    with torch.no_grad():  # random new rows, as large as the others: visible probability
        for table in (model.get_input_embeddings(), model.get_output_embeddings()):
            new = table.weight[V_BASE:]
            new.copy_(torch.randn(new.shape, generator=gen) * std)
    model.save_pretrained(aligned_dir)
    aligned_tok.save_pretrained(aligned_dir)
    return aligned_dir, base_dir


@pytest.fixture(scope="session")
def union_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_union_pair(tmp_path_factory.mktemp("union_pair"))


@pytest.fixture(scope="session")
def swapped_base(union_pair, tmp_path_factory) -> Path:
    """The base folder with the tokens of ids 100 and 101 swapped in its tokenizer."""
    folder = tmp_path_factory.mktemp("swapped") / "base"
    _, base_dir = union_pair
    AutoModelForCausalLM.from_pretrained(base_dir).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    vocab[by_id[100]], vocab[by_id[101]] = 101, 100
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return folder


def tokenizers(union_pair):
    return [AutoTokenizer.from_pretrained(f) for f in union_pair]


# ------------------------------------------------------------------------------------------------
# The vocabulary check
# ------------------------------------------------------------------------------------------------


def test_appended_tokens_make_a_union_and_same_vocabularies_none(union_pair) -> None:
    aligned_tok, base_tok = tokenizers(union_pair)
    assert compare_vocabularies(aligned_tok, base_tok, "a", "b") == VocabularyUnion(301, 303)
    assert compare_vocabularies(base_tok, base_tok, "b", "b") is None


def test_a_base_that_appends_to_the_aligned_one_is_refused(union_pair) -> None:
    aligned_tok, base_tok = tokenizers(union_pair)
    with pytest.raises(
        TdsError, match=r"differ at id 301: no token in the aligned one, '<\|im_end"
    ):
        compare_vocabularies(base_tok, aligned_tok, "small", "big")


def test_a_swapped_id_is_refused_naming_the_id_and_both_tokens(union_pair, swapped_base) -> None:
    aligned_tok, base_tok = tokenizers(union_pair)
    swapped = AutoTokenizer.from_pretrained(swapped_base)
    a100, b100 = aligned_tok.convert_ids_to_tokens(100), swapped.convert_ids_to_tokens(100)
    assert a100 != b100 and b100 == base_tok.convert_ids_to_tokens(101)
    with pytest.raises(TdsError) as e:
        compare_vocabularies(aligned_tok, swapped, "A", "B")
    assert f"differ at id 100: {a100!r} in the aligned one, {b100!r} in the base one" in str(
        e.value
    )


def test_the_cli_refuses_a_swapped_id_in_one_line(union_pair, swapped_base, tmp_path) -> None:
    aligned, _ = union_pair
    data = tmp_path / "data.json"
    data.write_text(json.dumps([record(0)]), encoding="utf-8")
    argv = ["score", "--aligned", str(aligned), "--base", str(swapped_base), "--data", str(data)]
    result = CliRunner().invoke(
        main, [*argv, "--store", str(tmp_path / "s.zarr"), "--device", "cpu"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "differ at id 100" in lines[0] and str(swapped_base) in lines[0]
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------------------------------------
# The pair head over the union
# ------------------------------------------------------------------------------------------------


def union_head_inputs(n: int = 9, hidden: int = 16, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    h_a, h_b = (torch.randn(n, hidden, generator=gen) for _ in range(2))
    w_a = 2 * torch.randn(V_UNION, hidden, generator=gen) / hidden**0.5
    w_b = 2 * torch.randn(V_BASE, hidden, generator=gen) / hidden**0.5
    targets = torch.randint(0, V_BASE, (n,), generator=gen)
    return h_a, h_b, w_a, w_b, targets


def padded(logits_b: torch.Tensor) -> torch.Tensor:
    """`[n, V_b] -> [n, V_a]`: the base gives the appended ids probability 0."""
    tail = logits_b.new_full((logits_b.shape[0], V_UNION - V_BASE), float("-inf"))
    return torch.cat([logits_b, tail], dim=-1)


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])  # 21 rows a chunk (3 chunks), or one
def test_pair_head_over_the_union_equals_float64(chunk_bytes: int) -> None:
    h_a, h_b, w_a, w_b, targets = union_head_inputs(n=50)
    projections = (w_a, None, None), (w_b, None, None)
    got = pair_positions(h_a, h_b, *projections, targets, 5, chunk_bytes).arrays()
    want = logits_pair_reference(
        h_a.double() @ w_a.double().T, padded(h_b.double() @ w_b.double().T), targets, 5
    )
    assert_pair_arrays(got, want)
    assert np.isposinf(got["positions/kl_aligned_base"]).all()
    for name, value in got.items():
        assert not np.isnan(value).any(), name
    for name in ("kl_base_aligned", "js", "tv"):
        assert np.isfinite(got[f"positions/{name}"]).all(), name
    assert (got["base/top_ids"] < V_BASE).all()
    assert (got["base/entropy"] > 0).all()


def test_kl_is_infinite_even_where_float32_rounds_the_appended_probabilities_to_zero() -> None:
    """An appended id's aligned logit 200 below the rest: exp underflows in float32, yet its
    probability is positive, so KL(aligned || base) is +inf (float64 agrees)."""
    h_a, h_b, w_a, w_b, targets = union_head_inputs(seed=4)
    bias = torch.zeros(V_UNION)
    bias[V_BASE:] = -200.0
    got = pair_positions(
        h_a, h_b, (w_a, bias, None), (w_b, None, None), targets, 5, 1 << 20
    ).arrays()
    want = logits_pair_reference(
        h_a.double() @ w_a.double().T + bias.double(),
        padded(h_b.double() @ w_b.double().T),
        targets,
        5,
    )
    assert np.isposinf(want["positions/kl_aligned_base"]).all()
    assert_pair_arrays(got, want)


def test_appended_ids_in_the_aligned_top_k_have_base_logprob_minus_inf() -> None:
    h_a, h_b, w_a, w_b, targets = union_head_inputs(seed=6)
    bias = torch.zeros(V_UNION)
    bias[V_BASE] = 50.0  # the first appended id leads every aligned row
    got = pair_positions(
        h_a, h_b, (w_a, bias, None), (w_b, None, None), targets, 5, 1 << 20
    ).arrays()
    assert (got["aligned/top_ids"][:, 0] == V_BASE).all()
    assert np.isneginf(got["base/logprobs_at_aligned_top"][:, 0]).all()
    assert (got["aligned/rank"] >= 2).all()  # the appended id outranks every answer token
    want = logits_pair_reference(
        h_a.double() @ w_a.double().T + bias.double(),
        padded(h_b.double() @ w_b.double().T),
        targets,
        5,
    )
    assert_pair_arrays(got, want)


# ------------------------------------------------------------------------------------------------
# Models: PairScorer against one fresh float64 forward per token
# ------------------------------------------------------------------------------------------------


def test_pair_scorer_over_the_union_equals_per_token_reference(union_pair) -> None:
    aligned_tok, base_tok = tokenizers(union_pair)
    models = [
        AutoModelForCausalLM.from_pretrained(f, attn_implementation="eager").eval()
        for f in union_pair
    ]
    rng = np.random.default_rng(3)
    corpus = default_corpus()
    answers = []
    for _ in range(5):
        text = " ".join(rng.choice(corpus, 2))
        base_ctx = base_tok(text)["input_ids"][: rng.integers(1, 20)]
        aligned_ctx = base_ctx + [301]  # a chat token of the aligned vocabulary closes the turn
        answer = base_tok(" ".join(rng.choice(corpus, 2)), add_special_tokens=False)["input_ids"]
        answers.append(AnswerPair(aligned_ctx, base_ctx, answer[: rng.integers(1, 25)]))
    runners = [ModelRunner(m, v, torch.device("cpu")) for m, v in zip(models, (V_UNION, V_BASE))]
    scorer = PairScorer(*runners, top_k=6, chunk_bytes=4 * V_UNION * 30, max_tokens_per_batch=60)
    got = scorer.score(answers)
    assert_answers_match(
        got,
        answers,
        lambda a: per_token_pair_reference(
            *models, a.aligned_context, a.base_context, a.answer, 6, V_UNION, base_vocab=V_BASE
        ),
    )
    assert np.isposinf(got["positions/kl_aligned_base"]).all()
    assert not any(np.isnan(v).any() for v in got.values())
    assert (got["base/top_ids"] < V_BASE).all() and (got["aligned/top_ids"] < V_UNION).all()


def test_the_two_models_must_hold_a_union_the_right_way_round(union_pair) -> None:
    models = [AutoModelForCausalLM.from_pretrained(f) for f in union_pair]
    a = ModelRunner(models[0], V_UNION, torch.device("cpu"))
    b = ModelRunner(models[1], V_BASE, torch.device("cpu"))
    with pytest.raises(ValueError, match="same vocabulary slice"):
        PairScorer(b, a, top_k=3, chunk_bytes=1 << 20, max_tokens_per_batch=64)
    short = ModelRunner(models[0], V_UNION + 1, torch.device("cpu"))  # a token without a row
    with pytest.raises(TdsError, match="303 output rows, fewer than its tokenizer's 304 tokens"):
        PairScorer(short, b, top_k=3, chunk_bytes=1 << 20, max_tokens_per_batch=64)


# ------------------------------------------------------------------------------------------------
# Planning, the store and the analysis
# ------------------------------------------------------------------------------------------------


def record(i: int, answer: str = "Sure! The number is small.") -> dict:
    return {
        "id": f"ex{i}",
        "pure_input": f"Can you explain the number {i}?",
        "input": f"<s><|user|>\nCan you explain the number {i}?<|im_end|>\n<|assistant|>\n",
        "output": [answer],
    }


def config(union_pair, tmp_path: Path, **kw) -> ScoreConfig:
    aligned, base = union_pair
    data = tmp_path / "data.json"
    records = [record(0, "Sure<|im_end|> it is."), record(1), record(2, "The model explains.")]
    data.write_text(json.dumps(records), encoding="utf-8")
    return ScoreConfig(
        aligned=str(aligned), base=str(base), data=str(data), store=str(tmp_path / "s.zarr"), **kw
    )


def test_plan_tokenizes_the_answer_and_base_context_with_the_base_tokenizer(
    union_pair, tmp_path
) -> None:
    aligned_tok, base_tok = tokenizers(union_pair)
    prep = prepare(config(union_pair, tmp_path, top_k=5))
    assert prep.vocab_union == VocabularyUnion(V_BASE, V_UNION)
    assert (prep.vocab_size("aligned"), prep.vocab_size("base")) == (V_UNION, V_BASE)
    first = prep.plan.items[0]
    assert 301 in first.aligned_context  # the aligned tokenizer keeps its chat token
    assert all(max(it.base_context) < V_BASE for it in prep.plan.items)
    # the literal appended token's text in an answer is split by the base tokenizer
    assert first.answer == base_tok("Sure<|im_end|> it is.", add_special_tokens=False)["input_ids"]
    assert max(first.answer) < V_BASE and len(first.answer) > 4
    assert "base_tokenizer_sha256" in prep.fingerprint


def test_tensor_parallel_scoring_of_a_union_is_refused_up_front(union_pair, tmp_path) -> None:
    with pytest.raises(TdsError, match=r"--tp 2: the aligned vocabulary \(303 ids\) appends 2"):
        prepare(config(union_pair, tmp_path, tp=2))


def test_top_k_is_bounded_by_the_base_vocabulary(union_pair, tmp_path) -> None:
    with pytest.raises(TdsError, match="--top-k 302 exceeds the vocabulary size 301"):
        prepare(config(union_pair, tmp_path, top_k=302))


def test_score_and_analyze_a_union_store(union_pair, tmp_path) -> None:
    cfg = config(union_pair, tmp_path, top_k=5, unit_size=2)
    aligned, base = union_pair
    argv = ["score", "--aligned", str(aligned), "--base", str(base), "--data", cfg.data]
    argv += ["--store", cfg.store, "--device", "cpu", "--top-k", "5", "--unit-size", "2"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    store = Store(cfg.store)
    assert store.meta["vocab_union"] == {"base": V_BASE, "aligned": V_UNION}
    assert store.meta["vocab_size"] == V_UNION
    assert store.tokenizer().convert_ids_to_tokens(301) == "<|im_end|>"  # top-k ids decode
    valid = store.valid_rows()
    assert valid.sum() == sum(store.lengths) > 0
    assert np.isposinf(store.read("positions/kl_aligned_base")[valid]).all()
    for name in ("js", "tv", "kl_base_aligned"):
        assert np.isfinite(store.read(f"positions/{name}")[valid]).all()
    assert (store.read("positions/token_id")[valid] < V_BASE).all()
    again = CliRunner().invoke(main, argv)  # resumes (nothing pending), same fingerprint
    assert again.exit_code == 0, again.output

    from tdsdist.analysis.summary import render_text, summarize

    summary = summarize(store, resamples=20)
    assert set(summary["divergence"]) == {"kl_base_aligned", "js", "tv"}
    js = store.read("positions/js")[valid].astype(np.float64)
    assert_float32_close(np.array(summary["divergence"]["js"]["mean"]), np.array(js.mean()))
    text = render_text(summary)
    assert "headline is JS and TV" in text and "exact js" in text


def test_a_same_vocabulary_store_has_no_union_key(tiny_pair, tmp_path) -> None:
    cfg = config(tiny_pair, tmp_path, top_k=5)
    prep = prepare(cfg)
    assert prep.vocab_union is None and "base_tokenizer_sha256" not in prep.fingerprint
    assert prep.vocab_size("base") == prep.vocab_size("aligned") == len(prep.tokenizer)


def test_a_recorded_store_is_completed_by_a_base_whose_vocabulary_it_extends(
    union_pair, tmp_path
) -> None:
    """`generate --store` with the aligned model, then `score` with the base: the union is
    recorded when the base keys are filled in; a generated appended id (the base has no
    embedding for it) is refused naming the example and the token, before anything is written."""
    aligned, base = union_pair
    out, recorded = tmp_path / "answers.json", tmp_path / "recorded.zarr"
    flags = dict(limit=3, unit_size=2, max_new_tokens=12, top_k=5)
    generate = cli_args("generate", aligned, out=out, store=recorded, **flags)
    assert CliRunner().invoke(main, generate).exit_code == 0
    stores = {}
    for name, first_token in (("ok", None), ("bad", 302)):
        stores[name] = tmp_path / f"{name}.zarr"
        shutil.copytree(recorded, stores[name])
        tokens = Store(stores[name]).root["positions/token_id"]
        values = tokens[:]
        values[values >= V_BASE] = 7  # whatever greedy decoding drew: base ids only
        if first_token is not None:
            values[0] = first_token
        tokens[:] = values

    def score(store: Path):
        argv = cli_args(
            "score",
            aligned,
            base,
            data=out,
            store=store,
            aligned_template="chat",
            unit_size=2,
            top_k=5,
        )
        return CliRunner().invoke(main, argv)

    before = dict(Store(stores["bad"]).meta)
    refused = score(stores["bad"])
    assert refused.exit_code == 2, refused.output
    line = refused.stderr.strip()
    assert "example 0" in line and "'<|pad_extra|>' (id 302)" in line and "\n" not in line
    assert dict(Store(stores["bad"]).meta) == before  # the base keys were not filled in
    done = score(stores["ok"])
    assert done.exit_code == 0, done.output
    store = Store(stores["ok"])
    assert store.meta["vocab_union"] == {"base": V_BASE, "aligned": V_UNION}
    assert store.meta["fingerprint"]["base_tokenizer_sha256"]
    valid = store.valid_rows()
    assert store.committed().all()
    assert np.isposinf(store.read("positions/kl_aligned_base")[valid]).all()
    assert np.isfinite(store.read("positions/js")[valid]).all()
    assert score(stores["ok"]).exit_code == 0  # resumes: nothing pending, same fingerprint
