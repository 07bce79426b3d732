"""Bad input through the real CLI: one clear line, exit code 2, nothing created or touched.

The contract (README, "Inputs"): every problem with the data file, the templates, the tokenizers
or the options is reported before any model loads as ONE line on stderr, `error: ...`, naming the
file, the example (index and id) and the field where they apply; the exit code is 2; there is no
traceback; no store is created, and an existing store is left byte for byte as it was.

Everything runs in-process through `click.testing.CliRunner` (transformers is imported once),
except two runs of `python -m tdsdist.score` in real subprocesses, which check what a user's
terminal actually shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from tdsdist_testkit import save_tiny_pair

from tdsdist.cli import main
from tdsdist.store import Store

STORE = "out.zarr"
DROP = object()  # a field that `example` leaves out


def example(i: int, **fields: Any) -> dict[str, Any]:
    """A valid just-eval record, with `fields` replaced (or removed when given `DROP`)."""
    record: dict[str, Any] = {
        "id": f"ex{i}",
        "pure_input": f"Can you explain the number {i}?",
        "input": f"<s><|user|>\nCan you explain the number {i}?\n<|assistant|>\n",
        "output": [f"Sure! The number {i} is a small number."],
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not DROP}


def write(path: Path, content: Any) -> Path:
    """bytes and str are written as they are, anything else as JSON."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def jsonl(records: list[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def leftovers(folder: Path) -> list[str]:
    """Anything a store creation left in `folder`: the store or its temporary twin."""
    return sorted(p.name for p in folder.iterdir() if STORE in p.name)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and modification time under `folder` (folders map to None)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        if p.is_file()
        else None
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def score(tiny_pair: tuple[Path, Path], tmp_path: Path) -> Callable[..., Result]:
    """`tdsdist score` in-process on the tiny pair; extra args override or add to the defaults."""
    aligned, base = tiny_pair

    def run(data: Path | str, *args: str, base_model: Path | None = None) -> Result:
        argv = ["score", "--aligned", str(aligned), "--base", str(base_model or base)]
        argv += ["--data", str(data), "--store", str(tmp_path / STORE), "--device", "cpu", *args]
        return CliRunner().invoke(main, argv)

    return run


def assert_refused(result: Result, *expected: str) -> str:
    """Exit 2 with one `error:` line on stderr holding every expected piece, and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    # Anything but the SystemExit of `user_errors` is an escaped exception, i.e. a traceback.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for piece in expected:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The data file: each case is one small file, refused with its name, the example and the field.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    name: str  # the data file's name, which the message must hold
    content: Any
    expected: tuple[str, ...]
    args: tuple[str, ...] = ()


GOOD = [example(0)]

DATA_CASES = [
    # Files that cannot be read or parsed.
    Bad("latin1.json", b'[{"id": "caf\xe9"}]', ("cannot read", "UnicodeDecodeError")),
    Bad("broken.json", '[\n  {"id": "ex0",\n   "pure_input": }\n]', ("line 3 column 18",)),
    Bad("unclosed.json", json.dumps(GOOD)[:-1], ("invalid JSON", "line 1")),
    Bad(
        "broken-line.jsonl",
        jsonl([example(0)]) + "\n" + '{"id": "ex1", "pure_input": "q",\n' + jsonl([example(2)]),
        ("JSONL line 3 does not parse",),
    ),
    Bad("number.json", "42", ("top level", "list")),
    Bad("string.json", '"some text"', ("top level", "list")),
    # One JSON object over several lines is not JSONL: say so rather than "line 1 does not parse".
    Bad("object.json", json.dumps({"examples": GOOD}, indent=2), ("one JSON object",)),
    # A single object on one line IS valid JSONL with one example, which then lacks its fields.
    Bad("one-object.jsonl", '{"a": 1}\n', ("example 0", "'id'", "missing")),
    Bad("huge-number.json", '[{"id": 1' + "0" * 5000 + "}]", ("invalid JSON", "digits")),
    Bad("deep.json", "[" * 100_000, ("invalid JSON",)),
    # No examples.
    Bad("empty-list.json", [], ("no examples",)),
    Bad("empty-file.jsonl", "", ("empty",)),
    Bad("blank-file.jsonl", "\n  \n", ("empty",)),
    # Records.
    Bad("not-object.json", [example(0), 5], ("example 1", "int", "not a JSON object")),
    Bad("not-object.jsonl", jsonl([example(0), ["a"]]), ("example 1", "list")),
    Bad("no-id.json", [example(0), example(1, id=DROP)], ("example 1", "'id'", "missing")),
    Bad("null-id.json", [example(0), example(1, id=None)], ("example 1", "'id'", "missing")),
    Bad("empty-id.json", [example(0), example(1, id=" ")], ("example 1", "'id'", "empty")),
    Bad("float-id.json", [example(0), example(1, id=1.5)], ("example 1", "(id 1.5)", "'id'")),
    Bad("bool-id.json", [example(0), example(1, id=True)], ("example 1", "(id True)", "'id'")),
    Bad(
        "no-instruction.json",
        [example(0), example(1, pure_input=DROP)],
        ("example 1", "(id 'ex1')", "'pure_input'", "missing"),
    ),
    Bad(
        "number-instruction.json",
        [example(0), example(1, pure_input=3)],
        ("example 1", "(id 'ex1')", "'pure_input'", "must be a string", "int"),
    ),
    Bad(
        "null-input.json",
        [example(0), example(1, input=None)],
        ("example 1", "(id 'ex1')", "'input'", "must be a string"),
    ),
    Bad(
        "no-output.json",
        [example(0), example(1, output=DROP)],
        ("example 1", "(id 'ex1')", "'output'", "missing"),
    ),
    Bad(
        "dict-output.json",
        [example(0), example(1, output={"text": "hi"})],
        ("example 1", "(id 'ex1')", "'output'", "dict"),
    ),
    Bad(
        "number-in-list-output.json",
        [example(0), example(1, output=[7])],
        ("example 1", "(id 'ex1')", "'output'", "int"),
    ),
    Bad("empty-output.json", [example(0), example(1, output="")], ("example 1", "'output'")),
    Bad("blank-output.json", [example(0), example(1, output="   ")], ("(id 'ex1')", "'output'")),
    Bad("empty-list-output.json", [example(0), example(1, output=[])], ("example 1", "'output'")),
    Bad("empty-first-output.json", [example(0), example(1, output=[""])], ("(id 'ex1')", "empty")),
    Bad(
        # A lone surrogate escape parses as JSON but no tokenizer takes it (it used to crash).
        "surrogate.json",
        '[{"id": "ex0", "pure_input": "q", "input": "<s>q", "output": "bad \\ud800 text"}]',
        ("example 0", "(id 'ex0')", "'output'", "surrogate"),
    ),
    Bad(
        "duplicate-ids.json",
        [example(0), example(1), example(2, id="ex0")],
        ("example 2", "(id 'ex0')", "'id'", "duplicates example 0"),
    ),
    Bad(
        # Ids are stored as strings, so 1 and "1" are the same example.
        "duplicate-int-ids.json",
        [example(0, id=1), example(1, id="1")],
        ("example 1", "'id'", "duplicates example 0"),
    ),
    # The whole file is validated, even with --limit.
    Bad(
        "bad-after-limit.json",
        [example(0), example(1), example(2, output=5)],
        ("example 2", "(id 'ex2')", "'output'"),
        ("--limit", "1"),
    ),
    # Field names are the ones asked for.
    Bad(
        "renamed-field.json",
        GOOD,
        ("example 0", "(id 'ex0')", "'answer'"),
        ("--output-field", "answer"),
    ),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.name)
def test_bad_data_file(case: Bad, score, tmp_path: Path) -> None:
    data = write(tmp_path / case.name, case.content)
    result = score(data, *case.args)
    assert_refused(result, case.name, *case.expected)
    assert leftovers(tmp_path) == []


def test_missing_data_file(score, tmp_path: Path) -> None:
    assert_refused(score(tmp_path / "nowhere.json"), "nowhere.json", "not found")
    assert leftovers(tmp_path) == []


def test_data_path_is_a_folder(score, tmp_path: Path) -> None:
    (tmp_path / "folder.json").mkdir()
    assert_refused(score(tmp_path / "folder.json"), "folder.json", "cannot read")
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_unreadable_data_file(score, tmp_path: Path) -> None:
    data = write(tmp_path / "locked.json", GOOD)
    data.chmod(0)
    try:
        assert_refused(score(data), "locked.json", "cannot read", "PermissionError")
    finally:
        data.chmod(0o600)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Problems found after the file parses: templates, tokenizers, options.
# ------------------------------------------------------------------------------------------------


def test_input_template_without_input_field(score, tmp_path: Path) -> None:
    data = write(tmp_path / "no-input.json", [example(0), example(1, input=DROP)])
    assert_refused(score(data, "--aligned-template", "input"), "example 1", "(id 'ex1')", "'input'")
    assert leftovers(tmp_path) == []


def test_context_too_long(score, tmp_path: Path) -> None:
    long_prompt = "<s>" + "The quick model explains the answer. " * 600  # > 2048 tokens
    data = write(tmp_path / "long.json", [example(0), example(1, input=long_prompt)])
    assert_refused(score(data), "example 1", "(id 'ex1')", "window")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name, record",
    [
        ("no-input-named.json", example(1, input=DROP)),
        ("long-named.json", example(1, input="<s>" + "The quick model explains. " * 800)),
    ],
)
def test_late_errors_name_the_data_file(score, tmp_path: Path, name: str, record: dict) -> None:
    data = write(tmp_path / name, [example(0), record])
    assert_refused(score(data), name, "example 1")


@pytest.fixture(scope="module")
def other_vocab_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model whose tokenizer has 517 tokens, not the tiny pair's 301."""
    return save_tiny_pair(tmp_path_factory.mktemp("other_vocab"), vocab_size=517)[1]


def test_mismatched_tokenizers(score, tmp_path: Path, other_vocab_base: Path) -> None:
    data = write(tmp_path / "good.json", GOOD)
    line = assert_refused(score(data, base_model=other_vocab_base), "tokenizers", "differ")
    assert str(other_vocab_base) in line
    assert leftovers(tmp_path) == []


def test_missing_urial_prefix(score, tmp_path: Path) -> None:
    data = write(tmp_path / "good.json", GOOD)
    prefix = tmp_path / "urial-prefix.txt"
    result = score(data, "--base-template", f"urial:{prefix}")
    assert_refused(result, "urial-prefix.txt", "not found")
    assert leftovers(tmp_path) == []


def test_missing_base_template_file(score, tmp_path: Path) -> None:
    data = write(tmp_path / "good.json", GOOD)
    result = score(data, "--base-template", str(tmp_path / "base.jinja"))
    assert_refused(result, "base.jinja", "not found")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("typo.yaml", "top_k: 5\ntopk: 3\n", ("unknown option", "topk")),
        ("list.yaml", "- top_k\n", ("mapping",)),
        ("broken.yaml", "top_k: 5\n  bad: [\n", ("invalid YAML", "line 2")),
        ("latin1.yaml", b"top_k: \xe9\n", ("cannot read", "UnicodeDecodeError")),
        # A quoted "no" is a true string: it must not be taken for a yes (it would delete a store).
        ("quoted-bool.yaml", 'overwrite: "no"\n', ("overwrite", "true or false")),
        ("int-device.yaml", "device: 5\n", ("device", "string")),
        ("zero-top-k.yaml", "top_k: 0\n", ("top_k", "positive")),
    ],
)
def test_bad_config_file(score, tmp_path: Path, name: str, content: Any, expected) -> None:
    data = write(tmp_path / "good.json", GOOD)
    config = write(tmp_path / name, content)
    assert_refused(score(data, "--config", str(config)), name, *expected)
    assert leftovers(tmp_path) == []


def test_missing_config_file(score, tmp_path: Path) -> None:
    data = write(tmp_path / "good.json", GOOD)
    result = score(data, "--config", str(tmp_path / "absent.yaml"))
    assert_refused(result, "absent.yaml", "not found")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--top-k", "0"), ("top_k", "positive", "0")),
        (("--top-k", "302"), ("--top-k 302", "vocabulary")),
        (("--unit-size", "0"), ("unit_size",)),
        (("--limit", "-1"), ("limit",)),
        (("--device", "cuda:x"), ("device", "cuda:x")),
        (("--tp", "2", "--dtype", "float64"), ("float64", "tp > 1")),
    ],
)
def test_bad_option(score, tmp_path: Path, args: tuple[str, ...], expected) -> None:
    data = write(tmp_path / "good.json", GOOD)
    assert_refused(score(data, *args), *expected)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# An existing store is never touched by a refused run.
# ------------------------------------------------------------------------------------------------

THREE = [example(0), example(1, output="Plain string answers are fine."), example(2)]


@pytest.fixture
def scored(score, tmp_path: Path) -> tuple[Path, Path, dict]:
    """A store scored from a 3-example file (2 of them, unit size 1): (data, store, snapshot)."""
    data = write(tmp_path / "three.json", THREE)
    result = score(data, "--limit", "2", "--unit-size", "1")
    assert result.exit_code == 0, result.output
    store = tmp_path / STORE
    assert Store(store, mode="r").committed().tolist() == [True, True]
    return data, store, snapshot(store)


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["resume", "overwrite"])
def test_bad_data_leaves_existing_store_untouched(score, scored, tmp_path, overwrite) -> None:
    _, store, before = scored
    bad = write(tmp_path / "bad.json", [example(0), example(1, pure_input=DROP)])
    result = score(bad, "--limit", "2", "--unit-size", "1", *overwrite)
    assert_refused(result, "bad.json", "example 1", "(id 'ex1')", "'pure_input'")
    assert snapshot(store) == before
    assert leftovers(tmp_path) == [STORE]


def test_other_config_is_refused_and_store_untouched(score, scored, tmp_path) -> None:
    data, store, before = scored
    result = score(data, "--limit", "2", "--unit-size", "1", "--top-k", "5")
    line = assert_refused(result, str(store), "top_k", "--overwrite")
    assert "top_k: 20 in the store, 5 now" in line
    assert snapshot(store) == before
    assert leftovers(tmp_path) == [STORE]


def test_other_data_is_refused_and_store_untouched(score, scored, tmp_path) -> None:
    _, store, before = scored
    other = write(tmp_path / "other.json", [example(0), example(1), example(5)])
    result = score(other, "--limit", "2", "--unit-size", "1")
    assert_refused(result, str(store), "data_sha256")
    assert snapshot(store) == before


# ------------------------------------------------------------------------------------------------
# Valid files in each accepted shape score.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("answers.jsonl", jsonl([example(0), example(1, output="A string answer.")])),
        ("answers.json", [example(0, output="One string."), example(1, output="Another.")]),
        # A byte order mark, CRLF line ends, a blank line, integer ids and a U+2028 inside a
        # string (which str.splitlines() used to cut a JSONL line at).
        (
            "windows.jsonl",
            "\ufeff"
            + jsonl([example(0, id=0), example(1, id=1, output="Line\u2028separated.")])
            .replace("\n", "\r\n")
            .replace("\r\n", "\r\n\r\n", 1),
        ),
    ],
)
def test_valid_files_score(score, tmp_path: Path, name: str, content: Any) -> None:
    data = write(tmp_path / name, content)
    result = score(data)
    assert result.exit_code == 0, (result.output, result.exception)
    store = Store(tmp_path / STORE, mode="r")
    assert len(store.ids) == 2 and store.committed().all()
    assert store.ids == (["0", "1"] if name == "windows.jsonl" else ["ex0", "ex1"])


def test_empty_answers_refused_with_a_hint_or_left_out(score, tmp_path: Path) -> None:
    """A model that stopped at once leaves an empty answer (as `generate` writes it): refused by
    default, naming the way out; left out and listed with --skip-empty-answers."""
    records = [example(0), example(1, output=[""]), example(2), example(3, output=[" \n"])]
    data = write(tmp_path / "generated.json", records)
    assert_refused(score(data), "example 1", "(id 'ex1')", "empty", "--skip-empty-answers")
    assert leftovers(tmp_path) == []
    result = score(data, "--skip-empty-answers")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "left out 2 examples with an empty answer (ids 'ex1', 'ex3')" in result.output
    store = Store(tmp_path / STORE, mode="r")
    assert store.ids == ["ex0", "ex2"] and store.committed().all()
    assert store.meta["fingerprint"]["skipped_empty_answers"] == ["ex1", "ex3"]
    again = score(data, "--skip-empty-answers")  # resumes: nothing to do, nothing refused
    assert again.exit_code == 0, (again.output, again.exception)
    # --limit counts the file's first records: of ex0 and ex1, only ex0 remains.
    limited = score(data, "--skip-empty-answers", "--limit", "2", "--overwrite")
    assert limited.exit_code == 0, (limited.output, limited.exception)
    assert Store(tmp_path / STORE, mode="r").ids == ["ex0"]


def test_all_answers_empty_is_refused(score, tmp_path: Path) -> None:
    data = write(tmp_path / "silent.json", [example(0, output=[""]), example(1, output="")])
    assert_refused(score(data, "--skip-empty-answers"), "silent.json", "every answer is empty")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# What a terminal shows: real processes.
# ------------------------------------------------------------------------------------------------


def test_subprocess_prints_one_error_line(
    tiny_pair: tuple[Path, Path], other_vocab_base: Path, tmp_path: Path
) -> None:
    aligned, base = tiny_pair
    broken = write(tmp_path / "broken.json", '[\n  {"id": "ex0",\n   "pure_input": }\n]')
    good = write(tmp_path / "good.json", GOOD)
    runs = {
        "broken.json": (broken, base, "line 3 column 18"),
        "tokenizers": (good, other_vocab_base, str(other_vocab_base)),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDSDIST_")}
    procs = {}
    for key, (data, base_model, _) in runs.items():
        store = tmp_path / f"{key}.zarr"
        argv = [sys.executable, "-m", "tdsdist.score", "--aligned", str(aligned)]
        argv += ["--base", str(base_model), "--data", str(data), "--store", str(store)]
        argv += ["--device", "cpu"]
        procs[key] = (
            store,
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            ),
        )
    for key, (store, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (key, stdout, stderr)
        assert "Traceback" not in stdout + stderr
        assert stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (key, stderr)
        assert key in lines[0] and runs[key][2] in lines[0], lines[0]
        assert not store.exists()
