"""Tests of the tiny offline model builders that the rest of the suite relies on."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tdsdist_testkit import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    USER_TOKEN,
    default_corpus,
    make_big_vocab_model,
    make_tiny_llama,
    train_tiny_tokenizer,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tiny_tokenizer(default_corpus(), 301)


def _random_unicode(rng: random.Random, length: int) -> str:
    """Arbitrary code points from every plane, surrogates excluded (not encodable)."""
    chars = []
    while len(chars) < length:
        cp = rng.choice((rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF), rng.randint(0, 0x10FFFF)))
        if not 0xD800 <= cp <= 0xDFFF:
            chars.append(chr(cp))
    return "".join(chars)


# ------------------------------------------------------------------------------- tokenizer


def test_corpus_is_deterministic_and_sizeable() -> None:
    corpus = default_corpus()
    assert corpus == default_corpus()
    assert len(corpus) >= 200
    assert len(set(corpus)) > len(corpus) // 2


@pytest.mark.parametrize("vocab_size", [262, 301, 517, 2000])
def test_vocab_size_is_exact(vocab_size: int) -> None:
    # 2000 is more than the default corpus has merges for: reserved tokens fill the rest.
    tok = train_tiny_tokenizer(default_corpus(), vocab_size)
    assert len(tok) == vocab_size
    assert sorted(tok.get_vocab().values()) == list(range(vocab_size))


def test_vocab_size_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 262"):
        train_tiny_tokenizer(default_corpus(), 261)


def test_tokenizer_training_is_deterministic(tokenizer: PreTrainedTokenizerFast) -> None:
    again = train_tiny_tokenizer(default_corpus(), 301)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<unk>",
        "<s>",
        "</s>",
    )
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.model_max_length == 2048
    for token in (USER_TOKEN, ASSISTANT_TOKEN):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


def test_round_trip_of_arbitrary_unicode(tokenizer: PreTrainedTokenizerFast) -> None:
    rng = random.Random(0)
    texts = [
        "",
        " ",
        "  leading and trailing  ",
        "tabs\tand\nnew\r\nlines\n\n",
        "Hello , world . it 's",  # decode must not "clean up" spaces
        "naïve café, 東京, こんにちは, Привет, مرحبا, 😀🚀👩‍👩‍👧",
        "e\u0301 combining, \u200b zero width, \x00 nul, \x7f del",
        f"literal {USER_TOKEN} and {BOS_TOKEN} in text",
    ] + [_random_unicode(rng, rng.randint(1, 60)) for _ in range(50)]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_bos_only_with_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "The quick model answers."
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    with_special = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert plain[0] != tokenizer.bos_token_id
    assert with_special == [tokenizer.bos_token_id, *plain]
    assert tokenizer.eos_token_id not in with_special


def test_chat_template_renders(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>\nWhat is 2+2?\n<|assistant|>\n"
    assert tokenizer.apply_chat_template(prompt, tokenize=False) == "<|user|>\nWhat is 2+2?\n"
    full = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": "4"}], tokenize=False
    )
    assert full.startswith(rendered)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    user_id, assistant_id = tokenizer.convert_tokens_to_ids([USER_TOKEN, ASSISTANT_TOKEN])
    assert ids[0] == user_id
    assert assistant_id in ids


# ---------------------------------------------------------------------------------- models


def test_weights_are_deterministic_per_seed(tokenizer: PreTrainedTokenizerFast) -> None:
    rng_state = torch.get_rng_state()
    a = make_tiny_llama(tokenizer, seed=0).state_dict()
    b = make_tiny_llama(tokenizer, seed=0).state_dict()
    c = make_tiny_llama(tokenizer, seed=1).state_dict()
    assert torch.equal(torch.get_rng_state(), rng_state), "global RNG must be left alone"
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_model_config(tokenizer: PreTrainedTokenizerFast) -> None:
    model = make_tiny_llama(tokenizer, seed=0, num_kv_heads=1, tie_embeddings=True)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.num_key_value_heads == 1
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_tiny_llama(tokenizer, seed=0, vocab_size=len(tokenizer) - 1)


def test_distributions_are_peaked_and_batching_is_exact(tokenizer: PreTrainedTokenizerFast) -> None:
    model = make_tiny_llama(tokenizer, seed=0)
    texts = default_corpus()[:8]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "right"
    with torch.no_grad():
        logits = model(**batch).logits
        for row, text in enumerate(texts):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            single = model(input_ids=ids).logits[0]
            torch.testing.assert_close(logits[row, : ids.shape[1]], single, atol=1e-5, rtol=0)
    top1 = logits[batch["attention_mask"].bool()].softmax(-1).max(-1).values
    assert 0.05 < top1.median().item() < 0.9


def test_saved_pair_loads(tiny_pair: tuple[Path, Path], tokenizer: PreTrainedTokenizerFast) -> None:
    aligned_dir, base_dir = tiny_pair
    assert (aligned_dir.name, base_dir.name) == ("aligned", "base")
    loaded = {}
    for folder in tiny_pair:
        assert (folder / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok.get_vocab() == tokenizer.get_vocab()
        assert tok.chat_template
        assert tok("hi")["input_ids"][0] == tok.bos_token_id
        assert tok("hi", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
        assert model.config.vocab_size == len(tok) == 301
        loaded[folder.name] = model.state_dict()
    expected = make_tiny_llama(tokenizer, seed=0).state_dict()
    assert all(torch.equal(loaded["aligned"][k], expected[k]) for k in expected)
    assert not torch.equal(loaded["aligned"]["lm_head.weight"], loaded["base"]["lm_head.weight"])


def test_padded_vocab_rows(tiny_pair_odd_vocab: tuple[Path, Path]) -> None:
    for folder in tiny_pair_odd_vocab:
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert len(tok) == 301
        assert model.config.vocab_size == 320
        assert model.get_input_embeddings().weight.shape[0] == 320
        ids = tok("padded rows", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.shape[-1] == 320
        # The padding rows are random, not zero: they take mass a scorer must discard.
        assert logits[..., 301:].abs().max() > 0


def test_big_vocab_model() -> None:
    # A small vocabulary keeps the test fast; the 128K default only changes the row count.
    model = make_big_vocab_model(vocab_size=1000, hidden_size=128, seed=3)
    assert model.config.vocab_size == 1000
    assert model.config.num_attention_heads == 2
    assert not model.training
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, 1000)
    again = make_big_vocab_model(vocab_size=1000, hidden_size=128, seed=3)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_float32_tolerance_follows_the_magnitude_and_can_fail() -> None:
    from tdsdist_testkit import EPS32, FORWARD_ULPS, assert_float32_close

    desired = np.array([-20.0, -0.01, 0.0, 7.06])
    inside = desired + 0.5 * FORWARD_ULPS * EPS32 * (np.abs(desired) + 8.0)
    assert_float32_close(inside, desired)
    assert_float32_close(np.array([7.06 + 1.3e-5]), np.array([7.06]))  # the Intel Xeon case
    for i in range(len(desired)):
        outside = desired.copy()
        outside[i] += 2 * FORWARD_ULPS * EPS32 * (abs(desired[i]) + 8.0)
        with pytest.raises(AssertionError, match="differ by more than"):
            assert_float32_close(outside, desired)
    with pytest.raises(AssertionError):
        assert_float32_close(np.array([np.inf]), np.array([1.0]))
    with pytest.raises(AssertionError):
        assert_float32_close(np.array([np.nan]), np.array([1.0]))


def test_cli_args_spells_the_flags() -> None:
    """Keywords become flags (underscores as dashes; True bare, None and False left out), the
    demo data by default, `--device cpu` after the options and `extra` last (it may override)."""
    from tdsdist_testkit.cli_args import cli_args

    from tdsdist.jobs.demo import demo_data_path

    got = cli_args(
        "score",
        Path("a"),
        "b",
        store=Path("s.zarr"),
        top_k=5,
        skip_empty_answers=True,
        answer_eos=None,
        no_prefix_cache=False,
        extra=("--limit", "2"),
    )
    assert got == [
        "score",
        "--aligned",
        "a",
        "--base",
        "b",
        "--data",
        str(demo_data_path()),
        "--store",
        "s.zarr",
        "--top-k",
        "5",
        "--skip-empty-answers",
        "--device",
        "cpu",
        "--limit",
        "2",
    ]
    bare = cli_args(None, "a", data="d.json", out="o.json", device=None)
    assert bare == ["--aligned", "a", "--data", "d.json", "--out", "o.json"]
