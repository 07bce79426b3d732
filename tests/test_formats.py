"""Data formats: JSON, JSONL, Parquet, `datasets` folders, AlpacaEval outputs, chat transcripts.

Each container must yield the same examples as the just-eval JSON it was written from; chat
transcripts give one example per scored assistant turn with the turns before it as context, and
a one-turn transcript scores exactly (every store array) as the same example in just-eval form.
Bad input in each format is one `error:` line naming the file, the example and the field (the
helpers of `test_inputs.py` check that), with no store created or touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args
from test_inputs import STORE, assert_refused, example, leftovers, snapshot, write
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.cli import main
from tdsdist.inputs.data import Example, Fields, read_data
from tdsdist.inputs.fingerprint import data_sha256
from tdsdist.inputs.plan import tokenize_context
from tdsdist.inputs.templates import (
    PLAIN_TEMPLATE,
    URIAL_ANSWER,
    URIAL_QUERY,
    aligned_context_fn,
    base_context_fn,
)
from tdsdist.store import Store

SHARED_DATA = Path(__file__).resolve().parents[1] / "../shared/data/just_eval_llama2_7b_chat.json"
RECORDS = [example(0), example(1, output=["Another answer."]), example(2)]


def parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def dataset_folder(path: Path, records: list[dict[str, Any]]) -> Path:
    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


def chat(i: int, *turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"id": f"c{i}", "messages": [{"role": r, "content": c} for r, c in turns], **extra}


def run_score(pair, data: Path, store: Path, *extra: str):
    args = cli_args("score", *pair, data=data, store=store, top_k=5, extra=extra)
    return CliRunner().invoke(main, args)


@pytest.fixture
def score(tiny_pair, tmp_path: Path):
    """`tdsdist score` in-process on the tiny pair into `tmp_path / STORE`."""
    return lambda data, *args: run_score(tiny_pair, data, tmp_path / STORE, *args)


def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every per-position array and the per-example lengths and flags of a store."""
    store = Store(path, mode="r")
    names = store.array_names() + [
        f"examples/{n}"
        for n in (
            "length",
            "offset",
            "aligned_context_length",
            "base_context_length",
            "answer_truncated",
        )
    ]
    return {name: store.read(name) for name in names}


# ------------------------------------------------------------------------------------------------
# Containers: the same records in each container are the same examples.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["json", "jsonl", "parquet", "datasets"])
def test_each_container_reads_the_same_examples(tmp_path: Path, container: str) -> None:
    reference = read_data(write(tmp_path / "ref.json", RECORDS)).examples
    make = {
        "json": lambda p: write(p.with_suffix(".json"), RECORDS),
        "jsonl": lambda p: write(
            p.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in RECORDS)
        ),
        "parquet": lambda p: parquet(p.with_suffix(".parquet"), RECORDS),
        "datasets": lambda p: dataset_folder(p, RECORDS),
    }
    path = make[container](tmp_path / "data")
    for forced in ("auto", container):
        data = read_data(path, format=forced)
        assert data.examples == reference
        assert (data.info.container, data.info.kind) == (container, "just-eval")
    keys = data.info.fingerprint_keys()
    assert keys == (
        {} if container in ("json", "jsonl") else {"data_format": f"{container}/just-eval"}
    )


def test_datasets_folder_rows_as_datasets_reads_them(tmp_path: Path) -> None:
    """Several shards, and a selection (saved flattened): the rows `load_from_disk` gives."""
    records = [example(i, output=[f"Answer {i}."]) for i in range(7)]
    whole = datasets.Dataset.from_list(records)
    whole.save_to_disk(str(tmp_path / "shards"), num_shards=3)
    whole.select([5, 2, 0]).save_to_disk(str(tmp_path / "picked"))
    for name in ("shards", "picked"):
        expected = [r["id"] for r in datasets.load_from_disk(str(tmp_path / name))]
        assert [e.id for e in read_data(tmp_path / name).examples] == expected
    assert len(list((tmp_path / "shards").glob("*.arrow"))) == 3


def test_field_maps_work_in_parquet_and_datasets(tmp_path: Path) -> None:
    renamed = [
        {"key": r["id"], "q": r["pure_input"], "prompt": r["input"], "a": r["output"]}
        for r in RECORDS
    ]
    fields = Fields(id="key", instruction="q", prompt="prompt", answer="a")
    reference = read_data(write(tmp_path / "ref.json", RECORDS)).examples
    assert read_data(parquet(tmp_path / "r.parquet", renamed), fields).examples == reference
    assert read_data(dataset_folder(tmp_path / "r", renamed), fields).examples == reference


def test_the_shared_just_eval_file_still_loads() -> None:
    data = read_data(SHARED_DATA)
    assert len(data.examples) == 1000 and (data.info.container, data.info.kind) == (
        "json",
        "just-eval",
    )
    assert data.info.fingerprint_keys() == {}  # what 0.1.0 stores recorded: they keep resuming
    assert data.examples[0].prompt is not None and data.examples[0].messages is None


def test_datasets_folder_hash_covers_its_files(tmp_path: Path) -> None:
    one = dataset_folder(tmp_path / "one", RECORDS)
    same = dataset_folder(tmp_path / "same", RECORDS)
    other = dataset_folder(tmp_path / "other", [*RECORDS[:2], example(2, output=["Changed."])])
    assert data_sha256(one) == data_sha256(same) != data_sha256(other)
    state = json.loads((one / "state.json").read_text())
    state["_split"] = "train"
    (same / "state.json").write_text(json.dumps(state))
    assert data_sha256(same) != data_sha256(one)  # the state counts too
    file = tmp_path / "f.json"
    write(file, RECORDS)
    import hashlib

    assert data_sha256(file) == hashlib.sha256(file.read_bytes()).hexdigest()  # as in 0.1.0


# ------------------------------------------------------------------------------------------------
# Ids from the record index; AlpacaEval.
# ------------------------------------------------------------------------------------------------


def alpaca(i: int, **fields: Any) -> dict[str, Any]:
    record = {
        "instruction": f"Name the number {i}.",
        "output": f"It is {i}.",
        "generator": "m1",
        "dataset": "helpful_base",
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


def test_alpaca_eval_outputs(tmp_path: Path) -> None:
    path = write(tmp_path / "model_outputs.json", [alpaca(0), alpaca(1, generator="m2")])
    data = read_data(path)
    assert [(e.id, e.instruction, e.answer) for e in data.examples] == [
        ("0", "Name the number 0.", "It is 0."),
        ("1", "Name the number 1.", "It is 1."),
    ]
    assert data.info.kind == "alpaca-eval" and data.info.ids_from_index
    assert data.info.fingerprint_keys() == {
        "data_format": "json/alpaca-eval",
        "ids": "record-index",
        "generator": ["m1", "m2"],
    }
    assert read_data(path, format="alpaca-eval").examples == data.examples
    # An explicit --instruction-field wins over AlpacaEval's own name.
    other = read_data(path, Fields(instruction="dataset"), format="alpaca-eval")
    assert other.examples[0].instruction == "helpful_base"


def test_alpaca_eval_end_to_end_records_generator(tiny_pair, tmp_path: Path) -> None:
    path = write(tmp_path / "model_outputs.json", [alpaca(0), alpaca(1)])
    result = run_score(tiny_pair, path, tmp_path / STORE, "--aligned-template", "chat")
    assert result.exit_code == 0, result.output
    assert "ids are the 0-based record indices" in result.output
    store = Store(tmp_path / STORE, mode="r")
    assert store.ids == ["0", "1"] and store.committed().all()
    fingerprint = store.meta["fingerprint"]
    assert fingerprint["generator"] == "m1" and fingerprint["ids"] == "record-index"
    assert fingerprint["fields"]["instruction"] == "instruction"
    again = run_score(tiny_pair, path, tmp_path / STORE, "--aligned-template", "chat")
    assert again.exit_code == 0, again.output  # resumes


def test_just_eval_without_ids(tmp_path: Path) -> None:
    records = [{k: v for k, v in example(i).items() if k != "id"} for i in range(3)]
    data = read_data(
        write(tmp_path / "noids.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    )
    assert [e.id for e in data.examples] == ["0", "1", "2"]
    assert data.info.fingerprint_keys() == {"ids": "record-index"}


# ------------------------------------------------------------------------------------------------
# Chat transcripts.
# ------------------------------------------------------------------------------------------------

CONVERSATION = chat(
    0,
    ("system", "Be brief."),
    ("user", "What is 2 + 2?"),
    ("assistant", "4."),
    ("user", "And 3 + 3?"),
    ("assistant", "6."),
)


def test_turns_last_and_all(tmp_path: Path) -> None:
    path = write(
        tmp_path / "chats.json", [CONVERSATION, chat(1, ("user", "Hi"), ("assistant", "Hello"))]
    )
    last = read_data(path)
    assert [(e.id, e.instruction, e.answer) for e in last.examples] == [
        ("c0", "And 3 + 3?", "6."),
        ("c1", "Hi", "Hello"),
    ]
    assert [m["role"] for m in last.examples[0].messages] == ["system", "user", "assistant", "user"]
    every = read_data(path, turns="all")
    assert [(e.id, e.index, e.answer) for e in every.examples] == [
        ("c0/1", 0, "4."),
        ("c0/2", 0, "6."),
        ("c1/1", 1, "Hello"),
    ]
    assert len(every.examples[0].messages) == 2  # the system message and the first question
    assert every.info.fingerprint_keys() == {"data_format": "json/chat", "turns": "all"}
    prompts = read_data(path, require_answer=False)  # generate: up to the last user turn
    assert [len(e.messages) for e in prompts.examples] == [4, 1]


def test_conversation_contexts(tiny_pair, tmp_path: Path) -> None:
    ex = read_data(write(tmp_path / "c.json", [CONVERSATION])).examples[0]
    q1, a1, q2 = "What is 2 + 2?", "4.", "And 3 + 3?"
    assert base_context_fn("plain")(ex) == (
        PLAIN_TEMPLATE.format(q=q1) + a1 + "```\n\n" + PLAIN_TEMPLATE.format(q=q2)
    )
    prefix = write(tmp_path / "urial.txt", "PREFIX\n```\n")
    assert base_context_fn(f"urial:{prefix}")(ex) == (
        "PREFIX\n```\n"
        + URIAL_QUERY.format(q=q1)
        + URIAL_ANSWER
        + a1
        + "\n```\n"
        + URIAL_QUERY.format(q=q2)
        + URIAL_ANSWER
    )
    assert base_context_fn("none")(ex) == f"{q1}\n\n{a1}\n\n{q2}"
    jinja = write(
        tmp_path / "t.jinja",
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}|{{ query }}",
    )
    assert (
        base_context_fn(str(jinja))(ex)
        == f"[system]Be brief.[user]{q1}[assistant]{a1}[user]{q2}|{q2}"
    )
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    assert aligned_context_fn("chat", tok)(ex) == tok.apply_chat_template(
        list(ex.messages), tokenize=False, add_generation_prompt=True
    )
    assert aligned_context_fn("chat", tok)(ex).startswith("Be brief.\n<|user|>")
    # A single-turn example renders as it always did.
    single = Example(0, "x", q1, None, a1)
    assert base_context_fn("plain")(single) == PLAIN_TEMPLATE.format(q=q1)
    assert base_context_fn(str(jinja))(single) == f"[user]{q1}|{q1}"


@pytest.mark.parametrize("base_template", ["plain", "none"])
def test_one_turn_transcript_scores_as_just_eval_chat(
    tiny_pair, tmp_path: Path, base_template
) -> None:
    """The acceptance test: every store array equal, bit for bit."""
    answers = ["Sure! It is a small number.", "Two words.", "The number three, most likely."]
    plain = [example(i, output=[a]) for i, a in enumerate(answers)]
    chats = [
        {
            "id": f"ex{i}",
            "messages": [
                {"role": "user", "content": r["pure_input"]},
                {"role": "assistant", "content": a},
            ],
        }
        for i, (r, a) in enumerate(zip(plain, answers))
    ]
    args = ("--aligned-template", "chat", "--base-template", base_template, "--unit-size", "2")
    for name, records in (("just-eval", plain), ("chat", chats)):
        data = write(tmp_path / f"{name}.json", records)
        result = run_score(tiny_pair, data, tmp_path / f"{name}.zarr", *args)
        assert result.exit_code == 0, result.output
    a, b = store_arrays(tmp_path / "just-eval.zarr"), store_arrays(tmp_path / "chat.zarr")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert Store(tmp_path / "chat.zarr", mode="r").ids == ["ex0", "ex1", "ex2"]


def test_all_turns_end_to_end(tiny_pair, tmp_path: Path) -> None:
    data = write(tmp_path / "chats.jsonl", json.dumps(CONVERSATION) + "\n")
    result = run_score(
        tiny_pair, data, tmp_path / STORE, "--aligned-template", "chat", "--turns", "all"
    )
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / STORE, mode="r")
    assert store.ids == ["c0/1", "c0/2"] and store.committed().all()
    lengths = store.read("examples/aligned_context_length")
    assert lengths[1] > lengths[0]  # the second turn sees the first exchange
    refused = run_score(tiny_pair, data, tmp_path / STORE, "--aligned-template", "chat")
    assert refused.exit_code == 2 and "turns" in refused.output  # --turns is fingerprinted


# ------------------------------------------------------------------------------------------------
# input vs input-verbatim: the doubled BOS.
# ------------------------------------------------------------------------------------------------


def test_input_removes_and_input_verbatim_keeps_the_doubled_bos(tiny_pair, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    bos = tok.bos_token_id
    prompt = example(0)["input"]  # starts with the text "<s>"
    assert tokenize_context(tok, prompt, True, keep_double_bos=True)[:2] == [bos, bos]
    removed = tokenize_context(tok, prompt, True)
    assert removed[0] == bos and removed[1] != bos
    assert tokenize_context(tok, prompt, True, keep_double_bos=True)[1:] == removed
    data = write(tmp_path / "d.json", RECORDS)
    lengths = {}
    for template in ("input", "input-verbatim"):
        result = run_score(
            tiny_pair, data, tmp_path / f"{template}.zarr", "--aligned-template", template
        )
        assert result.exit_code == 0, result.output
        store = Store(tmp_path / f"{template}.zarr", mode="r")
        lengths[template] = store.read("examples/aligned_context_length")
        assert store.meta["fingerprint"]["aligned_template"] == template
    np.testing.assert_array_equal(lengths["input-verbatim"], lengths["input"] + 1)


# ------------------------------------------------------------------------------------------------
# Bad input in each format: one line, exit 2, no store.
# ------------------------------------------------------------------------------------------------

GOOD_CHAT = chat(0, ("user", "Hi"), ("assistant", "Hello"))
BAD = {
    "missing-column.parquet": (
        lambda p: parquet(p, [{k: v for k, v in r.items() if k != "pure_input"} for r in RECORDS]),
        ("example 0", "(id 'ex0')", "'pure_input'", "missing"),
    ),
    "null-value.parquet": (
        lambda p: parquet(p, [example(0), example(1, pure_input=None)]),
        ("example 1", "(id 'ex1')", "'pure_input'", "must be a string", "NoneType"),
    ),
    "number-value.parquet": (
        lambda p: parquet(p, [{**example(i), "input": i} for i in range(2)]),
        ("example 0", "(id 'ex0')", "'input'", "must be a string", "int"),
    ),
    "no-assistant.json": (
        lambda p: write(p, [GOOD_CHAT, chat(1, ("user", "Hi"))]),
        ("example 1", "(id 'c1')", "'messages'", "no assistant turn"),
    ),
    "unknown-role.json": (
        lambda p: write(p, [GOOD_CHAT, chat(1, ("user", "Hi"), ("robot", "Beep"))]),
        ("example 1", "(id 'c1')", "'messages[1]'", "unknown role 'robot'"),
    ),
    "int-content.json": (
        lambda p: write(p, [GOOD_CHAT, {"id": "c1", "messages": [{"role": "user", "content": 5}]}]),
        ("example 1", "(id 'c1')", "'messages[0]'", "'content'", "must be a string", "int"),
    ),
    "messages-not-list.json": (
        lambda p: write(p, [GOOD_CHAT, {"id": "c1", "messages": "Hi"}]),
        ("example 1", "(id 'c1')", "'messages'", "must be a list", "str"),
    ),
    "not-alternating.json": (
        lambda p: write(p, [chat(0, ("user", "a"), ("user", "b"), ("assistant", "c"))]),
        ("example 0", "(id 'c0')", "'messages[1]'", "expected a assistant turn"),
    ),
    "no-datasets-folder": (
        lambda p: (p.mkdir(), write(p / "data.arrow", "not arrow"), p)[2],
        ("not a `datasets` folder", "state.json"),
    ),
    "alpaca-no-output.json": (
        lambda p: write(p, [alpaca(0), alpaca(1, output=None)]),
        ("example 1", "(id '1', from the record index", "'output'", "missing"),
    ),
    "alpaca-no-generator.json": (
        lambda p: write(p, [alpaca(0, generator=None)]),
        ("example 0", "'pure_input'", "missing", "--format alpaca-eval"),
    ),
    "mixed-ids.json": (
        lambda p: write(
            p, [example(0), example(1), {k: v for k, v in example(2).items() if k != "id"}]
        ),
        ("example 2", "'id'", "missing", "example 0 has one"),
    ),
    "parquet-forced.json": (
        lambda p: write(p, RECORDS),
        ("is not a readable Parquet file",),
    ),
    "datasets-forced.json": (lambda p: write(p, RECORDS), ("not a `datasets` folder",)),
    "jsonl-forced.json": (
        lambda p: write(p, RECORDS),
        ("--format jsonl expects JSONL", "a JSON list"),
    ),
    "json-forced.parquet": (lambda p: parquet(p, RECORDS), ("is a Parquet file",)),
    "chat-forced.json": (
        lambda p: write(p, RECORDS),
        ("example 0", "(id 'ex0')", "'messages'", "missing"),
    ),
    "dict-folder": (
        lambda p: (
            datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(
                str(p)
            ),
            p,
        )[1],
        ("DatasetDict", "train"),
    ),
    "bad-state": (
        lambda p: (p.mkdir(), write(p / "state.json", "{}"), p)[2],
        ("state.json", "not a `datasets` state file"),
    ),
    "empty-answer-turn.json": (
        lambda p: write(p, [chat(0, ("user", "Hi"), ("assistant", " "))]),
        ("example 0", "'messages[1]'", "empty answer", "--skip-empty-answers"),
    ),
}
FORCED = {
    "parquet-forced.json": "parquet",
    "datasets-forced.json": "datasets",
    "jsonl-forced.json": "jsonl",
    "json-forced.parquet": "json",
    "chat-forced.json": "chat",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_in_each_format(name: str, score, tmp_path: Path) -> None:
    make, expected = BAD[name]
    path = make(tmp_path / name)
    args = ["--aligned-template", "chat"]
    if name in FORCED:
        args += ["--format", FORCED[name]]
    assert_refused(score(path, *args), name, *expected)
    assert leftovers(tmp_path) == []


def test_chat_needs_the_chat_template(score, tmp_path: Path) -> None:
    path = write(tmp_path / "chats.json", [GOOD_CHAT])
    assert_refused(score(path), "chats.json", "--aligned-template chat")


def test_bad_parquet_leaves_existing_store_untouched(score, tmp_path: Path) -> None:
    data = dataset_folder(tmp_path / "good", RECORDS)
    assert score(data).exit_code == 0
    before = snapshot(tmp_path / STORE)
    bad = parquet(tmp_path / "bad.parquet", [{**r, "output": 3} for r in RECORDS])
    for extra in ((), ("--overwrite",)):
        assert_refused(score(bad, *extra), "bad.parquet", "example 0", "'output'", "int")
        assert snapshot(tmp_path / STORE) == before
    changed = dataset_folder(tmp_path / "changed", [*RECORDS[:2], example(2, output=["Other."])])
    assert_refused(score(changed), "data_sha256")  # the folder's contents are fingerprinted
    assert snapshot(tmp_path / STORE) == before


# ------------------------------------------------------------------------------------------------
# generate from transcripts: the conversation up to its last user turn.
# ------------------------------------------------------------------------------------------------


def test_generate_from_transcripts_then_score(tiny_pair, tmp_path: Path) -> None:
    prompts = write(tmp_path / "prompts.json", [CONVERSATION, chat(1, ("user", "Say hi."))])
    out, store = tmp_path / "answers.json", tmp_path / STORE
    args = cli_args(
        "generate", tiny_pair[0], data=prompts, out=out, store=store, max_new_tokens=6, top_k=5
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    # The first transcript's own last answer is replaced by the generated one.
    assert [m["role"] for m in records[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert records[0]["messages"][:4] == CONVERSATION["messages"][:4]
    assert [m["role"] for m in records[1]["messages"]] == ["user", "assistant"]
    recorded = Store(store, mode="r")
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    context = tok.apply_chat_template(
        CONVERSATION["messages"][:4], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0]).eval()
    first = int(recorded.read("positions/token_id", recorded.rows(0))[0])

    def logprob(text: str) -> float:
        ids = tokenize_context(tok, text, False)
        with torch.no_grad():
            logits = model(torch.tensor([ids + [first]])).logits[0, len(ids) - 1].double()
        return float(logits.log_softmax(-1)[first])

    assert recorded.meta["fingerprint"]["data_format"] == "json/chat"
    # `score` reads the answers file as transcripts and completes the recorded store.
    scored = run_score(tiny_pair, out, store, "--aligned-template", "chat", "--skip-empty-answers")
    assert scored.exit_code == 0, scored.output
    complete = Store(store, mode="r")
    assert complete.committed().all()
    # The first answer token's aligned log-probability is the model's given the whole conversation.
    stored = float(complete.read("aligned/logprob", complete.rows(0))[0])
    assert abs(stored - logprob(context)) < 1e-4
    alone = tok.apply_chat_template(
        CONVERSATION["messages"][3:4], tokenize=False, add_generation_prompt=True
    )
    assert abs(stored - logprob(alone)) > 1e-3  # the earlier turns matter: the check can fail
    refused = CliRunner().invoke(
        main, [*args[:-2], "--device", "cpu", "--aligned-template", "input", "--overwrite"]
    )
    assert refused.exit_code == 2 and "--aligned-template chat" in refused.output


def test_the_shipped_conversation_template_renders_as_the_readme_says() -> None:
    """`configs/templates/conversation.jinja`: the README quotes it and its output for a
    three-turn transcript (system text, one earlier exchange, the last question)."""
    from tdsdist.inputs.data import Example

    root = Path(__file__).parents[1]
    template = root / "configs" / "templates" / "conversation.jinja"
    turns = [("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "Why?")]
    messages = tuple({"role": r, "content": c} for r, c in turns)
    ex = Example(index=0, id="c0", instruction="Why?", prompt=None, answer="x", messages=messages)
    want = "Be brief.\n\n# Query:\nHi?\n\n# Answer:\nHello.\n\n# Query:\nWhy?\n\n# Answer:\n"
    assert base_context_fn(str(template))(ex) == want
    readme = (root / "README.md").read_text()
    assert want.replace("\n", "\\n") in readme
    body = "\n".join(
        line for line in template.read_text().splitlines() if not line.startswith(("{#-", "    "))
    )
    for line in body.splitlines():  # the README shows the template itself (indented in a list)
        assert ("  " + line).rstrip() in readme.splitlines() or not line.strip(), line
