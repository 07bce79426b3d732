"""The scorer's causal-only attention (no padding mask) against transformers' masked sdpa and the
float64 per-token reference, with and without a cached prefix, GQA, and sliding windows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tdsdist_testkit import (
    assert_float32_close,
    default_corpus,
    make_tiny_llama,
    train_tiny_tokenizer,
)
from transformers import MistralConfig, MistralForCausalLM

from tdsdist.engine.attention import NAME, RIGHT_PADDED, causal_attention, use_causal_attention
from tdsdist.engine.reference import per_token_reference
from tdsdist.engine.scorer import ContextAnswer, Scorer

K = 6


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(default_corpus(), 301)


def fresh_sequences(n: int, seed: int, prefix: list[int]) -> list[ContextAnswer]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        c, a = (int(x) for x in torch.randint(1, 25, (2,), generator=gen))
        ctx = prefix + torch.randint(3, 301, (c,), generator=gen).tolist()
        out.append(ContextAnswer(ctx, torch.randint(3, 301, (a,), generator=gen).tolist()))
    return out


def check_against_reference(model, seqs, prefix, vocab=301) -> None:
    # The reference runs first, on a copy: the scorer switches the model's attention.
    ref64 = copy.deepcopy(model).to(torch.float64)
    refs = [per_token_reference(ref64, s.context, s.answer, K, vocab) for s in seqs]
    ref = {k: np.concatenate([r[k] for r in refs]) for k in refs[0]}
    scorer = Scorer.for_model(model, vocab, K, 4 * vocab * 7, 120, torch.device("cpu"))
    scorer.runner.set_prefix(prefix)
    got = scorer.score(seqs)
    np.testing.assert_array_equal(got["top_ids"], ref["top_ids"])
    np.testing.assert_array_equal(got["rank"], ref["rank"])
    assert_float32_close(got["logprob"], ref["logprob"])
    assert_float32_close(got["top_logprobs"], ref["top_logprobs"])


@pytest.mark.parametrize("prefix_len", [0, 17])
def test_sdpa_model_switches_and_matches_reference(tok, prefix_len: int) -> None:
    model = make_tiny_llama(tok, seed=3, hidden_size=64, num_heads=4, num_kv_heads=2)
    model.config._attn_implementation = "sdpa"
    prefix = torch.randint(3, 301, (prefix_len,), generator=torch.Generator().manual_seed(9))
    seqs = fresh_sequences(10, seed=prefix_len, prefix=prefix.tolist())
    check_against_reference(model, seqs, prefix.tolist())
    assert model.config._attn_implementation == NAME


def test_eager_model_is_left_alone(tok) -> None:
    model = make_tiny_llama(tok, seed=3)
    assert not use_causal_attention(model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("prefix_len", [0, 5, 40])
def test_equals_masked_sdpa_on_real_rows(kv_heads: int, prefix_len: int) -> None:
    """Right-padded rows: the causal-only result equals sdpa with causal + padding mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(prefix_len + kv_heads)
    batch, heads, t, d = 3, 4, 11, 8
    lengths = [11, 6, 1]  # real tokens per row after the prefix; the rest is padding
    q = torch.randn(batch, heads, t, d, generator=gen)
    k = torch.randn(batch, kv_heads, prefix_len + t, d, generator=gen)
    v = torch.randn(batch, kv_heads, prefix_len + t, d, generator=gen)
    keys = torch.arange(prefix_len + t)
    causal = keys[None, :] <= (prefix_len + torch.arange(t))[:, None]  # [T, P + T]
    real = torch.stack([keys < prefix_len + n for n in lengths])  # [B, P + T]
    mask = (causal[None] & real[:, None])[:, None]  # [B, 1, T, P + T]
    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv_heads
    got, _ = causal_attention(module, q, k, v, None, scaling=d**-0.5, **{RIGHT_PADDED: True})
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d**-0.5, is_causal=False)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(got[b, :n], want[b, :n], atol=1e-6, rtol=1e-5)
    # Without the promise the mask is honoured, padded query rows included.
    unflagged, _ = causal_attention(module, q, k, v, mask, scaling=d**-0.5)
    torch.testing.assert_close(unflagged, want, atol=0, rtol=0)


@pytest.mark.parametrize("window", [6, 4096])
def test_sliding_window_model_matches_reference(window: int) -> None:
    """A window shorter than the sequences takes transformers' masked path; a long one the fast."""
    config = MistralConfig(
        vocab_size=301,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    seqs = fresh_sequences(6, seed=window, prefix=[5, 6, 7])
    check_against_reference(model, seqs, [5, 6, 7])


def test_switched_model_still_serves_left_padded_batches(tok) -> None:
    """Switching is per forward: a left-padded batch with its mask (as `generate` feeds) on a
    model a Scorer switched gives what the unswitched model gives."""
    model = make_tiny_llama(tok, seed=4, hidden_size=64, num_heads=4, num_kv_heads=2)
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(3, 301, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        Scorer.for_model(model, 301, K, 1 << 20, 64, torch.device("cpu"))
        assert model.config._attn_implementation == NAME
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)
