"""The scoring head against direct float64 computations over the full vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tdsdist.engine.head import (
    MIN_CHUNK_ROWS,
    VocabShard,
    chunk_rows,
    logit_statistics,
    score_positions,
    score_rows,
)


def reference(logits: torch.Tensor, targets: torch.Tensor, k: int, support=None):
    """Float64, the obvious way: full log-softmax, full sort, counts."""
    lg = logits.double()
    logp = torch.log_softmax(lg, -1)
    target = lg.gather(-1, targets[:, None])
    rank = (lg > target).sum(-1) + 1
    order = torch.sort(lg, dim=-1, descending=True, stable=True).indices[:, :k]
    p = logp.exp()
    entropy = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
    out = {
        "top_ids": order,
        "top_logprobs": logp.gather(-1, order),
        "logprob": logp.gather(-1, targets[:, None])[:, 0],
        "rank": rank,
        "entropy": entropy,
    }
    if support is not None:
        out["support_logprobs"] = logp.gather(-1, support)
    return out


@pytest.mark.parametrize("vocab", [1, 100, 8191, 8193, 50272])
def test_ranks_logprobs_entropy_match_float64(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    n, k = 7, min(5, vocab)
    hidden = torch.randn(n, 16, generator=gen)
    weight = torch.randn(vocab, 16, generator=gen)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    support = torch.randint(0, vocab, (n, k), generator=gen)
    out = score_positions(hidden, weight, None, targets, k, chunk_bytes=1 << 20, support=support)
    ref = reference(hidden.double() @ weight.double().T, targets, k, support)
    assert torch.equal(out.rank, ref["rank"])
    assert torch.equal(out.top_ids, ref["top_ids"])
    for key in ("top_logprobs", "logprob", "entropy", "support_logprobs"):
        np.testing.assert_allclose(getattr(out, key).double(), ref[key], atol=2e-5, rtol=0)


def test_ties_share_the_better_rank() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    out = logit_statistics(logits.clone(), torch.tensor([2, 3]), k=2)
    # Row 0: target 3.0 has no strictly greater logit -> rank 1, though two others tie with it.
    # Row 1: all equal -> rank 1; log-probability log(1/5).
    assert out.rank.tolist() == [1, 1]
    assert out.logprob[1].item() == pytest.approx(np.log(1 / 5), abs=1e-6)
    out = logit_statistics(logits.clone(), torch.tensor([3, 0]), k=2)
    assert out.rank.tolist() == [4, 1]  # 2.0 is beaten by the three 3.0s


def test_minus_infinity_logits() -> None:
    inf = float("inf")
    logits = torch.tensor([[0.0, -inf, 1.0, -inf], [-inf, 2.0, -inf, -inf]])
    targets = torch.tensor([1, 1])
    out = logit_statistics(logits.clone(), targets, k=2)
    ref = reference(logits, targets, 2)
    assert out.rank.tolist() == [3, 1]  # a -inf target ranks after both finite logits
    assert out.rank.tolist() == ref["rank"].tolist()
    assert out.logprob[0].item() == -inf
    assert out.logprob[1].item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(out.entropy).all()
    np.testing.assert_allclose(out.entropy.double(), ref["entropy"], atol=1e-6)


def test_chunked_equals_unchunked() -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(53, 8, generator=gen)
    weight = torch.randn(257, 8, generator=gen)
    bias = torch.randn(257, generator=gen)
    targets = torch.randint(0, 257, (53,), generator=gen)
    support = torch.randint(0, 257, (53, 6), generator=gen)
    whole = score_positions(hidden, weight, bias, targets, 6, chunk_bytes=1 << 30, support=support)
    assert chunk_rows(257, 4 * 257 * 5) == MIN_CHUNK_ROWS  # the floor: 53 rows -> chunks of 32, 21
    chunked = score_positions(
        hidden, weight, bias, targets, 6, chunk_bytes=4 * 257 * 5, support=support
    )
    # Ids and ranks are identical; floats may differ in the last bits (BLAS blocks by row count).
    assert torch.equal(whole.top_ids, chunked.top_ids)
    assert torch.equal(whole.rank, chunked.rank)
    for key in ("top_logprobs", "logprob", "entropy", "support_logprobs"):
        torch.testing.assert_close(getattr(whole, key), getattr(chunked, key), atol=1e-6, rtol=0)


def test_softcap_changes_probabilities_not_order() -> None:
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 8, generator=gen)
    weight = torch.randn(50, 8, generator=gen)
    targets = torch.randint(0, 50, (4,), generator=gen)
    plain = score_rows(hidden, weight, None, targets, 5)
    capped = score_rows(hidden, weight, None, targets, 5, softcap=2.0)
    ref = reference(2.0 * torch.tanh((hidden.double() @ weight.double().T) / 2.0), targets, 5)
    assert torch.equal(plain.top_ids, capped.top_ids)
    np.testing.assert_allclose(capped.logprob.double(), ref["logprob"], atol=1e-5)


def test_vocab_shard_defaults_to_one_process() -> None:
    assert VocabShard().world == 1


def test_the_runners_projection_is_all_the_head_needs(tiny_pair_odd_vocab) -> None:
    """`ModelRunner.projection()` (the seam): scoring through it equals the float64 reference
    over the model's own capped logits, trimmed to the tokenizer's rows."""
    from transformers import AutoModelForCausalLM

    from tdsdist.engine.runner import ModelRunner

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_odd_vocab[0], dtype=torch.float32).eval()
    runner = ModelRunner(model, 301, torch.device("cpu"))
    projection = runner.projection()
    assert projection.rows == 301 and projection.shard == runner.shard
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, model.config.hidden_size, generator=gen)
    targets = torch.randint(0, 301, (6,), generator=gen)
    with torch.inference_mode():  # as the jobs run it
        got = projection.score(hidden, targets, 4, chunk_bytes=1 << 20)
        logits = model.get_output_embeddings()(hidden)[:, :301]
        same = torch.equal(runner.logits(hidden), projection.logits(hidden))
    ref = reference(logits, targets, 4)
    assert torch.equal(got.rank, ref["rank"])
    np.testing.assert_allclose(got.logprob.double(), ref["logprob"], atol=1e-5, rtol=1e-5)
    assert same
