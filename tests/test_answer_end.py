"""The end-of-answer policy: an answer ends before its EOS. A literal EOS text written by another
tokenizer (the shipped just-eval file's `</s>`) is dropped, or mapped to the scoring tokenizer's
own EOS token; without the option answers are scored as written (as in 0.1.0)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from transformers import AutoTokenizer

from tdsdist.cli import main
from tdsdist.inputs.plan import AnswerEnd
from tdsdist.store import Store


def test_drop_and_map_the_literal_eos(tiny_pair) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    plain = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert AnswerEnd("</s>").apply("The answer.</s>", tok) == ("The answer.", [])
    assert AnswerEnd("</s>").apply("The answer. </s>\n", tok) == ("The answer. ", [])
    assert AnswerEnd("</s>", "map").apply("Yes.</s>", tok) == ("Yes.", [tok.eos_token_id])
    assert AnswerEnd("</s>").apply("No end here", tok) == ("No end here", [])
    assert AnswerEnd("</s>").apply("a </s> inside", tok) == ("a </s> inside", [])
    assert plain("Yes.</s>") != plain("Yes.")  # what the option is for


def score(pair, data: Path, store: Path, *extra: str):
    args = ["score", "--aligned", str(pair[0]), "--base", str(pair[1]), "--data", str(data),
            "--store", str(store), "--device", "cpu", "--top-k", "5", "--unit-size", "2", *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def test_scoring_with_the_policy(tiny_pair, tmp_path: Path) -> None:
    records = [
        {"id": str(i), "pure_input": f"Question {i}?", "input": f"<s>Q {i}", "output": [a]}
        for i, a in enumerate(["Sure, here it is.</s>", "No.</s>", "Without an end"])
    ]
    data = tmp_path / "answers.json"
    data.write_text(json.dumps(records))
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    runs = {}
    for name, extra in (("kept", ()), ("dropped", ("--answer-eos-text", "</s>")), ("mapped", ("--answer-eos-text", "</s>", "--answer-eos", "map"))):  # fmt: skip
        result = score(tiny_pair, data, tmp_path / f"{name}.zarr", *extra)
        assert result.exit_code == 0, result.output
        s = Store(tmp_path / f"{name}.zarr", mode="r")
        runs[name] = [s.read("positions/token_id", s.rows(e)).tolist() for e in range(3)]
        assert ("answer_eos" in s.meta["fingerprint"]) == (name != "kept")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert runs["kept"][0] == ids("Sure, here it is.</s>")
    assert runs["dropped"][0] == ids("Sure, here it is.")
    assert runs["mapped"][1] == ids("No.") + [tok.eos_token_id]
    assert runs["dropped"][2] == runs["kept"][2] == ids("Without an end")
    refused = score(tiny_pair, data, tmp_path / "dropped.zarr")  # the policy is fingerprinted
    assert refused.exit_code == 2 and "answer_eos" in refused.output
