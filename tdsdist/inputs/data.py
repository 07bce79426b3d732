"""Read and validate the aligned model's answers: just-eval / URIAL, AlpacaEval, chat transcripts.

Everything is checked before any model loads: a bad file costs the user a second, not the minutes
it takes to load two 70B models. Each problem is one `TdsError` naming the file, the example
(index and id) and the field. The records come from `formats.py` (JSON, JSONL, Parquet, a
`datasets` folder); what they hold is one of `KINDS`, detected from the first record or forced
with `--format`. A file whose records have no id field at all takes the 0-based record index as
ids (said in the log and recorded in the fingerprint); a file where only some records have one is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tdsdist.errors import TdsError
from tdsdist.inputs.formats import CONTAINERS, read_records
from tdsdist.inputs.text import check_unicode
from tdsdist.inputs.transcripts import (
    assistant_turns,
    check_messages,
    is_transcript,
    prompt_messages,
)

#: What the records hold.
KINDS = ("just-eval", "alpaca-eval", "chat")
#: `--format`: detect, or force a container (the kind then detected) or a kind (the container
#: then detected).
FORMATS = ("auto", *CONTAINERS, "alpaca-eval", "chat")
#: AlpacaEval `model_outputs.json` records: the keys that tell one.
ALPACA_KEYS = ("instruction", "output", "generator")


@dataclass(frozen=True)
class Fields:
    """Names of the input fields; the defaults are those of just-eval and URIAL output files."""

    id: str = "id"
    instruction: str = "pure_input"
    prompt: str = "input"
    answer: str = "output"


@dataclass(frozen=True)
class Example:
    """One aligned answer to score. `prompt` is the aligned model's full prompt, if the file has it.
    `messages`: for a chat transcript, the messages before the scored assistant turn (system
    ones included); `instruction` is then the user message just before it."""

    index: int
    id: str
    instruction: str
    prompt: str | None
    answer: str
    messages: tuple[dict[str, str], ...] | None = None
    #: The record's other fields with a scalar value (str, int, float, bool), in file order:
    #: what `--keep-fields` may keep in the store for `--group-by` (`store/fields.py`).
    metadata: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class DataInfo:
    """How the file was read: what a store records about it beyond the data hash."""

    container: str  # json | jsonl | parquet | datasets
    kind: str  # just-eval | alpaca-eval | chat
    fields: Fields  # as applied (AlpacaEval reads `instruction` where the default names pure_input)
    ids_from_index: bool = False
    turns: str | None = None  # chat only
    generators: tuple[str, ...] = ()  # AlpacaEval's `generator` values, first seen first

    def fingerprint_keys(self) -> dict[str, Any]:
        """Keys only where they say something new: a just-eval JSON/JSONL file with ids adds
        none, so stores made before these formats existed keep resuming."""
        keys: dict[str, Any] = {}
        if self.container not in ("json", "jsonl") or self.kind != "just-eval":
            keys["data_format"] = f"{self.container}/{self.kind}"
        if self.ids_from_index:
            keys["ids"] = "record-index"
        if self.turns is not None:
            keys["turns"] = self.turns
        if self.generators:
            keys["generator"] = (
                self.generators[0] if len(self.generators) == 1 else list(self.generators)
            )
        return keys

    def notes(self, path: Path | str) -> list[str]:
        """What the log says about the file."""
        notes = []
        if self.kind != "just-eval" or self.container not in ("json", "jsonl"):
            notes.append(f"tdsdist: {path}: read as {self.kind} records from {self.container}")
        if self.ids_from_index:
            notes.append(
                f"tdsdist: {path}: no record has a field '{self.fields.id}': the ids are the"
                " 0-based record indices"
            )
        return notes


@dataclass
class Data:
    examples: list[Example]
    info: DataInfo
    skipped: list[str] = field(default_factory=list)


SKIP_HINT = " (--skip-empty-answers leaves such examples out)"


class EmptyAnswer(TdsError):
    """An example whose answer is empty: refused, or left out with `--skip-empty-answers`."""


def _record_id(
    path: Path, index: int, record: dict[str, Any], fields: Fields, index_ids: bool
) -> tuple[str, str]:
    """(the id, the `where` of every message about this record)."""
    if index_ids:
        where = (
            f"{path}: example {index} (id '{index}', from the record index: no field '{fields.id}')"
        )
        return str(index), where
    raw_id = record.get(fields.id, None)
    where = f"{path}: example {index}" + ("" if raw_id is None else f" (id {raw_id!r})")
    if raw_id is None:
        raise TdsError(f"{where}: field '{fields.id}' is missing")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise TdsError(f"{where}: field '{fields.id}' must be a string or an integer")
    if isinstance(raw_id, str) and not raw_id.strip():
        raise TdsError(f"{where}: field '{fields.id}' is empty")
    if isinstance(raw_id, str):
        check_unicode(where, fields.id, raw_id)
    return str(raw_id), where


def _not_an_object(path: Path, index: int, record: object) -> TdsError:
    return TdsError(f"{path}: example {index}: is a {type(record).__name__}, not a JSON object")


def _example(
    path: Path,
    index: int,
    record: object,
    fields: Fields,
    require_answer: bool = True,
    index_ids: bool = False,
) -> Example:
    if isinstance(record, str) and not require_answer:  # a plain list of instructions
        if not record.strip():
            raise TdsError(f"{path}: example {index}: the instruction is empty")
        check_unicode(f"{path}: example {index}", "instruction", record)
        return Example(index=index, id=str(index), instruction=record, prompt=None, answer="")
    if not isinstance(record, dict):
        raise _not_an_object(path, index, record)
    id_, where = _record_id(path, index, record, fields, index_ids)

    def text_field(name: str, required: bool) -> str | None:
        if name not in record:
            if required:
                hint = ""
                if name == fields.instruction and "instruction" in record:
                    hint = " (AlpacaEval outputs without `generator`? use --format alpaca-eval)"
                raise TdsError(f"{where}: field '{name}' is missing{hint}")
            return None
        value = record[name]
        if not isinstance(value, str):
            raise TdsError(f"{where}: field '{name}' must be a string, not {type(value).__name__}")
        check_unicode(where, name, value)
        return value

    instruction = text_field(fields.instruction, required=True)
    prompt = text_field(fields.prompt, required=False)
    assert instruction is not None
    if not require_answer:
        return Example(
            index=index,
            id=id_,
            instruction=instruction,
            prompt=prompt,
            answer="",
            metadata=_scalars(record, fields),
        )
    if fields.answer not in record:
        raise TdsError(f"{where}: field '{fields.answer}' is missing")
    answer = record[fields.answer]
    if isinstance(answer, list):
        if not answer:
            raise EmptyAnswer(f"{where}: field '{fields.answer}' is an empty list{SKIP_HINT}")
        answer = answer[0]
    if not isinstance(answer, str):
        raise TdsError(
            f"{where}: field '{fields.answer}' must be a string or a list whose first element is"
            f" a string, not {type(answer).__name__}"
        )
    if not answer.strip():
        raise EmptyAnswer(f"{where}: field '{fields.answer}' is an empty answer{SKIP_HINT}")
    check_unicode(where, fields.answer, answer)
    return Example(
        index=index,
        id=id_,
        instruction=instruction,
        prompt=prompt,
        answer=answer,
        metadata=_scalars(record, fields),
    )


def _scalars(record: dict[str, Any], fields: Fields) -> tuple[tuple[str, Any], ...]:
    """The record's scalar fields besides the id and the texts (NaN counts as missing)."""
    texts = {fields.id, fields.instruction, fields.prompt, fields.answer}
    return tuple(
        (k, v)
        for k, v in record.items()
        if k not in texts and isinstance(v, (str, int, float, bool)) and v == v
    )


def _chat_examples(
    path: Path,
    index: int,
    record: object,
    fields: Fields,
    require_answer: bool,
    index_ids: bool,
    turns: str,
    skip_empty: bool,
) -> list[tuple[Example, bool]]:
    """The examples of one transcript, each with whether its answer is empty."""
    if not isinstance(record, dict):
        raise _not_an_object(path, index, record)
    id_, where = _record_id(path, index, record, fields, index_ids)
    messages = check_messages(where, record)
    if not require_answer:
        prompt = prompt_messages(where, messages)
        ex = Example(
            index, id_, prompt[-1]["content"], None, "", tuple(prompt), _scalars(record, fields)
        )
        return [(ex, False)]
    examples = []
    for number, at in assistant_turns(where, messages, turns):
        answer = messages[at]["content"]
        if not answer.strip() and not skip_empty:
            raise EmptyAnswer(
                f"{where}: field 'messages[{at}]' (assistant turn {number}) is an empty"
                f" answer{SKIP_HINT}"
            )
        ex = Example(
            index=index,
            id=id_ if turns == "last" else f"{id_}/{number}",
            instruction=messages[at - 1]["content"],  # alternation: a user turn precedes it
            prompt=None,
            answer=answer,
            messages=tuple(messages[:at]),
            metadata=_scalars(record, fields),  # the transcript's own fields, for every turn
        )
        examples.append((ex, not answer.strip()))
    return examples


def detect_kind(record: object, fields: Fields) -> str:
    """What the first record holds: a transcript (`messages`), an AlpacaEval output
    (`instruction`, `output`, `generator`, and not the instruction field asked for), or just-eval."""
    if is_transcript(record):
        return "chat"
    if isinstance(record, dict) and fields.instruction not in record:
        if all(k in record for k in ALPACA_KEYS):
            return "alpaca-eval"
    return "just-eval"


def kind_fields(kind: str, fields: Fields) -> Fields:
    """AlpacaEval names the instruction `instruction`: read so unless another field was asked for."""
    if kind == "alpaca-eval" and fields.instruction == Fields.instruction:
        return replace(fields, instruction="instruction")
    return fields


def _ids_from_index(path: Path, records: list[object], fields: Fields) -> bool:
    """True when no record has the id field; a file where only some have one is refused."""
    has = [isinstance(r, dict) and r.get(fields.id) is not None for r in records]
    objects = [isinstance(r, dict) for r in records]
    if not any(has):
        return True
    lacking = [i for i, (h, o) in enumerate(zip(has, objects)) if o and not h]
    if lacking:
        i = lacking[0]
        raise TdsError(
            f"{path}: example {i}: field '{fields.id}' is missing (example {has.index(True)} has"
            " one: ids come from the record index only when no example has one)"
        )
    return False


def read_data(
    path: Path | str,
    fields: Fields = Fields(),
    limit: int | None = None,
    require_answer: bool = True,
    skip_empty: bool = False,
    format: str = "auto",
    turns: str = "last",
) -> Data:
    """All examples of a data file, validated; those of the first `limit` records if given.

    The whole file is validated even with `limit`, so that a later full run cannot fail on a
    problem that the trial run skipped. With `require_answer=False` (prompts for generation) the
    answer field is not read, a plain JSON list of instruction strings is accepted too and a
    transcript gives one prompt, its conversation up to the last user turn. With `skip_empty`,
    examples whose answer is empty (a model that stopped at once) are left out and their ids
    listed in `Data.skipped`, instead of refusing the file.
    """
    if format not in FORMATS:
        raise TdsError(f"unknown data format {format!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    records, container = read_records(path, format if format in CONTAINERS else "auto")
    if not isinstance(records, list):
        raise TdsError(f"{path}: the top level must be a JSON list of objects or JSONL")
    if not records:
        raise TdsError(f"{path}: no examples")
    kind = format if format in KINDS else detect_kind(records[0], fields)
    fields = kind_fields(kind, fields)
    index_ids = _ids_from_index(path, records, fields)
    found: list[tuple[Example, bool]] = []
    for i, r in enumerate(records):
        if kind == "chat":
            found += _chat_examples(
                path, i, r, fields, require_answer, index_ids, turns, skip_empty
            )
            continue
        try:
            found.append((_example(path, i, r, fields, require_answer, index_ids), False))
        except EmptyAnswer:
            if not skip_empty:
                raise
            found.append((_example(path, i, r, fields, False, index_ids), True))
    seen: dict[str, int] = {}
    for ex, _ in found:
        if ex.id in seen:
            raise TdsError(
                f"{path}: example {ex.index} (id {ex.id!r}): field '{fields.id}' duplicates"
                f" example {seen[ex.id]}"
            )
        seen[ex.id] = ex.index
    if limit is not None:
        found = [(ex, empty) for ex, empty in found if ex.index < limit]
    generators: tuple[str, ...] = ()
    if kind == "alpaca-eval":
        values = [r.get("generator") for r in records if isinstance(r, dict)]
        generators = tuple(dict.fromkeys(v for v in values if isinstance(v, str)))
    info = DataInfo(
        container, kind, fields, index_ids, turns if kind == "chat" else None, generators
    )
    return Data(
        [ex for ex, empty in found if not empty], info, [ex.id for ex, empty in found if empty]
    )


def load_examples(
    path: Path | str,
    fields: Fields = Fields(),
    limit: int | None = None,
    require_answer: bool = True,
    skipped: list[str] | None = None,
) -> list[Example]:
    """`read_data`'s examples (any format, detected); with a `skipped` list, empty answers are
    left out and their ids appended to it."""
    data = read_data(path, fields, limit, require_answer, skip_empty=skipped is not None)
    if skipped is not None:
        skipped.extend(data.skipped)
    return data.examples
