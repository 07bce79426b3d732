"""The batched, chunked, teacher-forced scorer against a naive per-token loop.

The reference (`tdsdist.engine.reference.per_token_reference`) does what the published pipeline does: for
every answer position t, a fresh forward pass over `context + answer[:t]` (no cache, no batching,
no padding), then the full next-token distribution in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdsdist_testkit import assert_float32_close, default_corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.reference import per_token_reference
from tdsdist.engine.scorer import ContextAnswer, Scorer, token_budget_batches

K = 7


def naive(model, context, answer, k, support=None) -> dict[str, np.ndarray]:
    return per_token_reference(model, context, answer, k, model.vocab_for_test, support)


def sequences(tokenizer, n: int, seed: int) -> list[ContextAnswer]:
    """Fresh inputs: contexts and answers of varied lengths cut from the default corpus."""
    rng = np.random.default_rng(seed)
    corpus = default_corpus()
    out = []
    for _ in range(n):
        ctx = tokenizer(" ".join(rng.choice(corpus, 2)), add_special_tokens=True)["input_ids"]
        ans = tokenizer(" ".join(rng.choice(corpus, 2)), add_special_tokens=False)["input_ids"]
        out.append(ContextAnswer(ctx[: int(rng.integers(1, 30))], ans[: int(rng.integers(1, 40))]))
    return out


def load(folder, dtype=torch.float32):
    """Eager attention: its result does not depend on the sequence length (sdpa's kernels differ
    in the last bits between a prefix and the whole sequence, ~1e-5 on these peaked tiny models),
    so what is compared here is the scorer's algorithm, not attention-kernel rounding."""
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation="eager"
    ).eval()


@pytest.mark.parametrize("fixture", ["tiny_pair", "tiny_pair_odd_vocab"])
def test_batched_scorer_equals_per_token_loop(fixture: str, request: pytest.FixtureRequest) -> None:
    aligned_dir, base_dir = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(aligned_dir)
    vocab = len(tokenizer)
    seqs = sequences(tokenizer, n=9, seed=123)
    for folder in (aligned_dir, base_dir):
        model = load(folder)
        model.vocab_for_test = vocab
        # A small token budget forces several padded batches; a small chunk forces chunking.
        scorer = Scorer.for_model(
            model,
            vocab,
            K,
            chunk_bytes=4 * vocab * 5,
            max_tokens_per_batch=96,
            device=torch.device("cpu"),
        )
        support = [
            np.random.default_rng(i).integers(0, vocab, (len(s.answer), K))
            for i, s in enumerate(seqs)
        ]
        got = scorer.score(seqs, support)
        offset = 0
        for s, sup in zip(seqs, support):
            ref = naive(model, s.context, s.answer, K, sup)
            rows = slice(offset, offset + len(s.answer))
            offset += len(s.answer)
            np.testing.assert_array_equal(got["top_ids"][rows], ref["top_ids"])
            np.testing.assert_array_equal(got["rank"][rows], ref["rank"])
            assert_float32_close(got["top_logprobs"][rows], ref["top_logprobs"])
            assert_float32_close(got["logprob"][rows], ref["logprob"])
            assert_float32_close(got["support_logprobs"][rows], ref["support"])
        assert offset == len(got["rank"])
        assert (got["top_ids"] < vocab).all(), "a padded vocabulary row was ranked"


def test_float64_agrees_to_1e10(tiny_pair) -> None:
    aligned_dir, _ = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(aligned_dir)
    model = load(aligned_dir, torch.float64)
    model.vocab_for_test = len(tokenizer)
    seqs = sequences(tokenizer, n=4, seed=7)
    got = Scorer.for_model(model, len(tokenizer), K, 1 << 20, 64, torch.device("cpu")).score(seqs)
    ref = {
        k: np.concatenate([naive(model, s.context, s.answer, K)[k] for s in seqs])
        for k in ("logprob", "rank")
    }
    np.testing.assert_array_equal(got["rank"], ref["rank"])
    # The head's normaliser is float32 by design, so agreement is at float32 resolution.
    assert_float32_close(got["logprob"], ref["logprob"])


def test_entropy_matches_full_distribution(tiny_pair) -> None:
    aligned_dir, _ = tiny_pair
    tokenizer = AutoTokenizer.from_pretrained(aligned_dir)
    model = load(aligned_dir)
    s = sequences(tokenizer, n=1, seed=3)[0]
    got = Scorer.for_model(model, len(tokenizer), K, 1 << 20, 4096, torch.device("cpu")).score([s])
    with torch.no_grad():
        logits = model(torch.tensor([s.context + s.answer])).logits[0].double()
    logp = torch.log_softmax(
        logits[len(s.context) - 1 : len(s.context) - 1 + len(s.answer), : len(tokenizer)], -1
    )
    entropy = -(logp.exp() * logp).sum(-1).numpy()
    assert_float32_close(got["entropy"], entropy)


def test_token_budget_batches_minimise_padding_plus_forward_cost() -> None:
    """Against brute force over every split of the sorted order, on fresh random lengths."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(1, 9))
        lengths = [int(x) for x in rng.integers(1, 60, n)]
        budget, cost = int(rng.integers(40, 200)), int(rng.integers(0, 80))
        batches = token_budget_batches(lengths, budget, cost)
        assert sorted(i for b in batches for i in b) == list(range(n))

        def total(split, lengths=lengths, cost=cost):
            return sum(len(b) * max(lengths[i] for i in b) + cost for b in split)

        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        best = min(
            total(split)
            for mask in range(2 ** (n - 1))
            for split in [_split_at(order, mask)]
            if all(len(b) == 1 or len(b) * lengths[b[0]] <= budget for b in split)
        )
        assert total(batches) == best
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget


def _split_at(order: list[int], mask: int) -> list[list[int]]:
    """`order` cut after position p wherever bit p of `mask` is set."""
    out, current = [], []
    for p, i in enumerate(order):
        current.append(i)
        if mask >> p & 1 or p == len(order) - 1:
            out.append(current)
            current = []
    return out


def test_token_budget_batches_longest_first_and_complete() -> None:
    lengths = [5, 50, 7, 50, 3, 20, 100]
    batches = token_budget_batches(lengths, max_tokens=100)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert batches[0] == [6]  # the longest sequence first, alone
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert [lengths[b[0]] for b in batches] == sorted(
        (lengths[b[0]] for b in batches), reverse=True
    )
