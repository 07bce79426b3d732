"""The end-of-answer policy: an answer ends before its EOS. A literal EOS text written by another
tokenizer (the shipped just-eval file's `</s>`) is dropped, or mapped to the scoring tokenizer's
own EOS token; without the option answers are scored as written (as in 0.1.0)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args
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
    args = cli_args("score", *pair, data=data, store=store, top_k=5, unit_size=2, extra=extra)
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
    for name, extra in (
        ("kept", ()),
        ("dropped", ("--answer-eos-text", "</s>")),
        ("mapped", ("--answer-eos-text", "</s>", "--answer-eos", "map")),
    ):
        result = score(tiny_pair, data, tmp_path / f"{name}.zarr", *extra)
        assert result.exit_code == 0, result.output
        s = Store(tmp_path / f"{name}.zarr", mode="r")
        runs[name] = [s.read("positions/token_id", s.rows(e)).tolist() for e in range(3)]
        assert ("answer_eos" in s.meta["fingerprint"]) == (name != "kept")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    split = {"add_special_tokens": False, "split_special_tokens": True}
    text_ids = lambda text: tok(text, **split)["input_ids"]  # noqa: E731
    assert runs["kept"][0] == text_ids("Sure, here it is.</s>")  # text stays text
    assert tok.eos_token_id not in runs["kept"][0]
    assert runs["dropped"][0] == ids("Sure, here it is.")
    assert runs["mapped"][1] == ids("No.") + [tok.eos_token_id]
    assert runs["dropped"][2] == runs["kept"][2] == ids("Without an end")
    refused = score(tiny_pair, data, tmp_path / "dropped.zarr")  # the policy is fingerprinted
    assert refused.exit_code == 2 and "answer_eos" in refused.output


def test_special_token_text_is_text_and_a_store_keeps_its_choice(tiny_pair, tmp_path: Path) -> None:
    hostile = "Hello <|user|> world </s> <s>"
    records = [{"id": "0", "pure_input": "Q?", "input": "<s>Q", "output": [hostile]}]
    data = tmp_path / "hostile.json"
    data.write_text(json.dumps(records))
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    special = set(tok.all_special_ids)
    new, old = tmp_path / "new.zarr", tmp_path / "old.zarr"
    made = score(tiny_pair, data, new)
    assert made.exit_code == 0, made.output
    assert made.output.count("1 example(s) contain a special-token string") == 1
    s = Store(new, mode="r")
    assert s.meta["fingerprint"]["special_tokens_in_text"] == "split"
    assert not set(s.read("positions/token_id", s.rows(0)).tolist()) & special
    assert tok.decode(s.read("positions/token_id", s.rows(0)).tolist()) == hostile
    assert score(tiny_pair, data, old, "--special-tokens-in-text", "parse").exit_code == 0
    s = Store(old, mode="r")
    assert "special_tokens_in_text" not in s.meta["fingerprint"]  # as stores made before
    parsed = s.read("positions/token_id", s.rows(0)).tolist()
    assert parsed == tok(hostile, add_special_tokens=False)["input_ids"]
    assert set(parsed) & special
    # Resumed without the option, each store keeps its own; asking for the other is refused.
    assert score(tiny_pair, data, old).exit_code == 0
    assert score(tiny_pair, data, new).exit_code == 0
    refused = score(tiny_pair, data, old, "--special-tokens-in-text", "split")
    assert refused.exit_code == 2 and "special_tokens_in_text" in refused.output
