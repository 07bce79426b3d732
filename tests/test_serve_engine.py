"""The engine loop without HTTP: score requests that arrive together share one batch, and a
request that fails inside the engine fails alone."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.lockstep import LockstepDecoder
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import AnswerPair, PairScorer
from tdsdist.parallel.dist import init_distributed
from tdsdist.serve.engine import Engine, EngineFull, Job

BAD = 77  # an answer holding this id makes the flaky scorer fail


class FlakyScorer(PairScorer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def score(self, answers, progress=None):
        self.calls.append(len(answers))
        if any(BAD in a.answer for a in answers):
            raise RuntimeError("injected")
        return super().score(answers, progress)


@pytest.fixture(scope="module")
def parts(tiny_pair):
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    runners = [
        ModelRunner(AutoModelForCausalLM.from_pretrained(f).eval(), len(tok), torch.device("cpu"))
        for f in tiny_pair
    ]
    scorer = FlakyScorer(*runners, 5, 1 << 20, 4096)
    decoder = LockstepDecoder(*runners, 5, 1 << 20, {tok.eos_token_id})
    return scorer, decoder


def _job(kind, payload, results, done: threading.Event, n: int) -> Job:
    def emit(event, data):
        results.setdefault(id(payload), []).append(event)
        if len(results) == n and all(
            v[-1] in ("result", "error", "done") for v in results.values()
        ):
            done.set()

    return Job(kind, payload, emit)


def test_a_failing_request_fails_alone_in_a_shared_batch(parts) -> None:
    scorer, decoder = parts
    engine = Engine(scorer, decoder, init_distributed(1, 60, torch.device("cpu")), 8, 8, 200.0)
    answers = [AnswerPair([5, 6, 7], [8, 9], a) for a in ([20, 21], [BAD, 22], [23, 24, 25])]
    results: dict[int, list[str]] = {}
    done = threading.Event()
    for a in answers:  # queued before the loop starts: they arrive together
        engine.submit(_job("score", a, results, done, len(answers)))
    scorer.calls.clear()
    engine.start()
    assert done.wait(60)
    engine.stop()
    assert [results[id(a)][-1] for a in answers] == ["result", "error", "result"]
    assert scorer.calls == [3, 1, 1, 1]  # one shared batch, then one by one after its failure
    assert engine.depth() == 0


def test_a_full_queue_refuses(parts) -> None:
    scorer, decoder = parts
    engine = Engine(scorer, decoder, init_distributed(1, 60, torch.device("cpu")), 1, 1, 5.0)
    for _ in range(2):
        engine.submit(Job("score", AnswerPair([5], [6], [7]), lambda *_: None))
    with pytest.raises(EngineFull):
        engine.submit(Job("score", AnswerPair([5], [6], [7]), lambda *_: None))
