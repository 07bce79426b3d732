"""The pair head against float64 references: exact divergences over the full vocabulary.

Head level: random hidden states and projections (odd vocabularies, soft-capping, a masked -inf
logit, identical inputs, chunked against unchunked, two ranks on a vocabulary that 2 does not
divide). Model level: `PairScorer` on the tiny pair with a padded vocabulary against
`per_token_pair_reference`, one fresh forward per token of each model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tdsdist_testkit import (
    assert_answers_match,
    assert_float32_close,
    assert_pair_arrays,
    default_corpus,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.head import VocabShard, vocab_slice
from tdsdist.engine.pair_head import pair_positions
from tdsdist.engine.reference import logits_pair_reference, per_token_pair_reference
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, PairScorer

DIVERGENCES = ("kl_aligned_base", "kl_base_aligned", "js", "tv")
EXACT = ("top_ids", "rank", "ties")


def random_pair(vocab: int, n: int = 9, hidden: int = 16, seed: int = 0, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    h_a, h_b = (torch.randn(n, hidden, generator=gen) for _ in range(2))
    w_a, w_b = (scale * torch.randn(vocab, hidden, generator=gen) / hidden**0.5 for _ in range(2))
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return h_a, h_b, w_a, w_b, targets


@pytest.mark.parametrize("vocab", [1, 100, 301, 8193])
def test_pair_head_equals_float64_over_the_full_vocabulary(vocab: int) -> None:
    h_a, h_b, w_a, w_b, targets = random_pair(vocab, seed=vocab)
    k = min(5, vocab)
    got = pair_positions(h_a, h_b, (w_a, None, None), (w_b, None, None), targets, k, 1 << 20)
    want = logits_pair_reference(
        h_a.double() @ w_a.double().T, h_b.double() @ w_b.double().T, targets, k
    )
    assert_pair_arrays(got.arrays(), want)
    assert (got.js <= np.log(2) + 1e-6).all() and (got.tv <= 1).all()


def test_soft_capping_and_a_bias_are_applied_to_both_models() -> None:
    h_a, h_b, w_a, w_b, targets = random_pair(301, seed=3, scale=8.0)  # capped, not saturated
    bias = torch.linspace(-1, 1, 301)
    cap = 5.0
    got = pair_positions(h_a, h_b, (w_a, bias, cap), (w_b, None, cap), targets, 5, 1 << 20)
    logits_a = cap * torch.tanh((h_a.double() @ w_a.double().T + bias.double()) / cap)
    logits_b = cap * torch.tanh((h_b.double() @ w_b.double().T) / cap)
    assert_pair_arrays(got.arrays(), logits_pair_reference(logits_a, logits_b, targets, 5))


def test_a_masked_logit_gives_infinite_kl_never_nan() -> None:
    """Token 7 is masked (-inf) under the base model only: KL(aligned || base) = +inf where the
    aligned model gives it mass; KL(base || aligned), JS and TV stay finite. Token 9 is masked
    under both: it contributes nothing (0 log 0 = 0)."""
    h_a, h_b, w_a, w_b, targets = random_pair(50, n=4, seed=5)
    bias_b = torch.zeros(50)
    bias_b[[7, 9]] = float("-inf")
    bias_a = torch.zeros(50)
    bias_a[9] = float("-inf")
    targets[0] = 7  # the answer token itself masked under the base
    got = pair_positions(h_a, h_b, (w_a, bias_a, None), (w_b, bias_b, None), targets, 3, 1 << 20)
    arrays = got.arrays()
    assert np.isinf(arrays["positions/kl_aligned_base"]).all()
    for name in ("positions/kl_base_aligned", "positions/js", "positions/tv"):
        assert np.isfinite(arrays[name]).all(), name
    assert not any(np.isnan(v).any() for v in arrays.values() if v.dtype.kind == "f")
    assert arrays["base/logprob"][0] == -np.inf and arrays["base/rank"][0] == 49  # 48 above it
    want = logits_pair_reference(
        h_a.double() @ w_a.double().T + bias_a, h_b.double() @ w_b.double().T + bias_b, targets, 3
    )
    assert_pair_arrays(arrays, want)


def test_identical_models_and_contexts_diverge_by_nothing() -> None:
    h_a, _, w_a, _, targets = random_pair(8193, seed=11)
    got = pair_positions(h_a, h_a, (w_a, None, None), (w_a, None, None), targets, 5, 1 << 20)
    for name in DIVERGENCES:
        assert (getattr(got, name).abs() <= 1e-6).all(), name
    assert torch.equal(got.aligned_rank, got.base_rank)
    assert (got.aligned_rank_of_base_top1 == 1).all()


def test_chunked_equals_unchunked() -> None:
    h_a, h_b, w_a, w_b, targets = random_pair(301, n=70, seed=2)
    args = (h_a, h_b, (w_a, None, None), (w_b, None, None), targets, 5)
    whole = pair_positions(*args, chunk_bytes=1 << 26).arrays()
    chunked = pair_positions(*args, chunk_bytes=4 * 301 * 4).arrays()  # the 32-row floor / 3
    for name, value in whole.items():
        np.testing.assert_array_equal(chunked[name], value, err_msg=name)


def test_ties_are_counted_per_model() -> None:
    h = torch.zeros(1, 4)
    w_a = torch.zeros(6, 4)  # all six logits tie: 5 others
    w_b = torch.eye(6, 4)  # logits 0, 0, 0, 0, 0, 0 except rows 0-3 get h's entries
    h_b = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    got = pair_positions(
        h, h_b, (w_a, None, None), (w_b, None, None), torch.tensor([1]), 2, 1 << 20
    )
    assert int(got.aligned_ties) == 5 and int(got.aligned_rank) == 1
    assert int(got.base_ties) == 1 and int(got.base_rank) == 1  # token 2 ties token 1


def _two_ranks(rank: int, init: str, inputs, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    h_a, h_b, w_a, w_b, targets = inputs
    start, end = vocab_slice(w_a.shape[0], rank, 2)
    shard = VocabShard(start, dist.group.WORLD, w_a.shape[0])
    got = pair_positions(
        h_a,
        h_b,
        (w_a[start:end], None, None),
        (w_b[start:end], None, None),
        targets,
        5,
        4 * 301 * 40,
        shard,
    )
    if rank == 0:
        results.update({k: torch.from_numpy(v) for k, v in got.arrays().items()})
    dist.destroy_process_group()


def test_two_ranks_on_a_vocabulary_two_does_not_divide(tmp_path) -> None:
    """301 = 151 + 150 rows: every quantity from the slices plus all-reduces equals one process."""
    inputs = random_pair(301, n=45, seed=8)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_ranks, args=(f"file://{tmp_path}/rdzv", inputs, results), nprocs=2)
        got = {k: v.numpy() for k, v in results.items()}
    h_a, h_b, w_a, w_b, targets = inputs
    want = pair_positions(h_a, h_b, (w_a, None, None), (w_b, None, None), targets, 5, 1 << 20)
    for name, value in want.arrays().items():
        if value.dtype.kind == "i":
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            assert_float32_close(got[name], value, err_msg=name)


def test_pair_scorer_equals_per_token_reference(tiny_pair_odd_vocab) -> None:
    """Both tiny models (padded vocabulary: 301 tokens, 320 rows), different contexts, a small
    budget (several padded batches) and chunk (several chunks), against one fresh float64-scored
    forward per token of each model."""
    aligned_dir, base_dir = tiny_pair_odd_vocab
    tokenizer = AutoTokenizer.from_pretrained(aligned_dir)
    vocab = len(tokenizer)
    models = [
        AutoModelForCausalLM.from_pretrained(f, attn_implementation="eager").eval()
        for f in (aligned_dir, base_dir)
    ]
    rng = np.random.default_rng(17)
    corpus = default_corpus()
    answers = []
    for _ in range(6):
        a_ctx, b_ctx, ans = (
            tokenizer(" ".join(rng.choice(corpus, 2)), add_special_tokens=special)["input_ids"]
            for special in (True, True, False)
        )
        answers.append(
            AnswerPair(
                a_ctx[: rng.integers(1, 25)],
                b_ctx[: rng.integers(1, 25)],
                ans[: rng.integers(1, 30)],
            )
        )
    runners = [ModelRunner(m, vocab, torch.device("cpu")) for m in models]
    scorer = PairScorer(*runners, top_k=6, chunk_bytes=4 * vocab * 30, max_tokens_per_batch=80)
    got = scorer.score(answers)
    assert_answers_match(
        got,
        answers,
        lambda a: per_token_pair_reference(
            *models, a.aligned_context, a.base_context, a.answer, 6, vocab
        ),
    )
    assert (got["aligned/top_ids"] < vocab).all() and (got["base/top_ids"] < vocab).all()


def test_the_fused_sums_equal_the_masked_path_where_nothing_is_masked() -> None:
    """Chunks without a -inf logit take one fused dot product per sum; the path that guards every
    0 x inf term must give the same numbers on them."""
    from tdsdist.engine.pair_head import _finite_sums, _masked_sums

    gen = torch.Generator().manual_seed(4)
    la, lb = (torch.log_softmax(3 * torch.randn(6, 1000, generator=gen), -1) for _ in range(2))
    p, q = la.exp(), lb.exp()
    scratch = [torch.empty_like(la) for _ in range(2)]
    fused = torch.stack(_finite_sums(la, lb, p, q, *scratch))
    guarded = torch.stack(_masked_sums(la, lb, p, q, *scratch))
    assert_float32_close(fused.numpy(), guarded.numpy(), scale=1.0)
