"""Lockstep decoding of the pair: the aligned model's answer equals `Decoder`'s, and each position's
pair-head row equals `PairScorer` teacher-forcing the finished answer, with requests joining and
leaving the running batch at different steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tdsdist_testkit import assert_pair_arrays
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.decoder import Decoder, Sampling, end_of_answer_ids
from tdsdist.engine.lockstep import AlignedWrites, LockstepDecoder, LockstepRequest
from tdsdist.engine.pair_head import PairOutput
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, PairScorer

PROMPTS = ["the cat sat on the mat", "a dog", "why is the sky blue and the grass green today"]
K, CHUNK = 5, 1 << 20


@pytest.fixture(scope="module")
def pair(tiny_pair):
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    runners = {}
    for name, folder in zip(("aligned", "base"), tiny_pair):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        runners[name] = ModelRunner(model, len(tok), torch.device("cpu"), head_dtype="float32")
    return tok, runners


def _contexts(tok, prompt: str) -> dict[str, list[int]]:
    return {
        "aligned": tok(prompt)["input_ids"],
        "base": tok("# Query: " + prompt + " # Answer:")["input_ids"],
    }


def _run(decoder: LockstepDecoder, requests, join_at, remove_at=None):
    """Steps until every request finished; request i is added before step `join_at[i]`."""
    got = {r.id: [] for r in requests}
    finish = {}
    step = 0
    while step == 0 or len(decoder) or any(j >= step for j in join_at):
        for r, j in zip(requests, join_at):
            if j == step:
                decoder.add(r)
        if remove_at and remove_at[1] == step:
            decoder.remove(remove_at[0])
            finish[remove_at[0]] = "removed"
        for out in decoder.step():
            if out.token is not None:
                got[out.id].append(out.stats)
            if out.finish_reason:
                finish[out.id] = out.finish_reason
        step += 1
    return got, finish


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_lockstep_equals_decoder_and_pair_scorer(pair, temperature):
    tok, runners = pair
    end = end_of_answer_ids(runners["aligned"].model, tok)
    decoder = LockstepDecoder(runners["aligned"], runners["base"], K, CHUNK, end)
    requests = [
        LockstepRequest(str(i), _contexts(tok, p), 4 + 2 * i, temperature, 0.9, seed=10 + i)
        for i, p in enumerate(PROMPTS)
    ]
    got, finish = _run(decoder, requests, join_at=[0, 2, 2])  # two join together
    scorer = PairScorer(runners["aligned"], runners["base"], K, CHUNK, 4096)
    for r in requests:
        sampling = Sampling(r.max_new_tokens, temperature, 0.9)
        want = Decoder(runners["aligned"], tok, sampling).generate([r.contexts["aligned"]], r.seed)
        assert r.tokens == want[0].ids  # the answer `tdsdist generate` writes
        assert finish[r.id] == ("length" if len(r.tokens) == r.max_new_tokens else "stop")
        arrays = PairOutput.cat(got[r.id]).arrays()
        answer = AnswerPair(r.contexts["aligned"], r.contexts["base"], r.tokens)
        assert_pair_arrays(arrays, scorer.score([answer]))


def test_remove_leaves_the_others_unchanged(pair):
    tok, runners = pair
    end = end_of_answer_ids(runners["aligned"].model, tok)

    def run(with_removal: bool):
        decoder = LockstepDecoder(runners["aligned"], runners["base"], K, CHUNK, end)
        requests = [LockstepRequest(str(i), _contexts(tok, p), 6) for i, p in enumerate(PROMPTS)]
        got, finish = _run(decoder, requests, [0, 0, 1], ("0", 2) if with_removal else None)
        return requests, got, finish

    full, full_got, _ = run(False)
    cut, cut_got, finish = run(True)
    assert finish["0"] == "removed" and len(cut_got["0"]) == 2
    for a, b in zip(full[1:], cut[1:]):
        assert a.tokens == b.tokens
        assert_pair_arrays(
            PairOutput.cat(cut_got[b.id]).arrays(), PairOutput.cat(full_got[a.id]).arrays()
        )
    assert np.all(np.isfinite(PairOutput.cat(cut_got["1"]).arrays()["positions/js"]))


class ForcedAt:
    """A policy that writes `token` at answer position `t` and lets the aligned model write the
    rest (the shape of a nudging policy: another choice at chosen steps)."""

    def __init__(self, t: int, token: int) -> None:
        self.t, self.token, self.aligned = t, token, AlignedWrites()

    def choose(self, logits, requests, shard):
        out = self.aligned.choose(logits, requests, shard)
        for i, r in enumerate(requests):
            if len(r.tokens) == self.t:
                out[i] = self.token
        return out


def test_a_policy_choosing_an_aligned_only_token_ends_the_answer_there(tmp_path) -> None:
    from test_vocab_union import V_BASE, V_UNION, save_union_pair

    folders = save_union_pair(tmp_path)
    tok = AutoTokenizer.from_pretrained(folders[1])
    models = [AutoModelForCausalLM.from_pretrained(f).eval() for f in folders]
    runners = [ModelRunner(m, v, torch.device("cpu")) for m, v in zip(models, (V_UNION, V_BASE))]
    decoder = LockstepDecoder(*runners, K, CHUNK, set(), policy=ForcedAt(2, V_BASE + 1))
    context = tok("the cat sat")["input_ids"]
    request = LockstepRequest("u", {"aligned": context + [V_BASE], "base": context}, 8)
    got, finish = _run(decoder, [request], [0])
    assert finish["u"] == "base_vocabulary" and request.tokens[2] == V_BASE + 1
    assert len(request.tokens) == 3 and len(decoder) == 0
    arrays = PairOutput.cat(got["u"]).arrays()
    assert np.isneginf(arrays["base/logprob"][2]) and np.isfinite(arrays["base/logprob"][:2]).all()
    answer = AnswerPair(request.contexts["aligned"], context, request.tokens[:2])
    want = PairScorer(*runners, K, CHUNK, 4096).score([answer])
    assert_pair_arrays({k: v[:2] for k, v in arrays.items()}, want)
