"""Read and validate the aligned model's answers (just-eval / URIAL format).

Everything is checked before any model loads: a bad file costs the user a second, not the minutes
it takes to load two 70B models. Each problem is one `TdsError` naming the file, the example
(index and id) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tdsdist.errors import TdsError, first_line


@dataclass(frozen=True)
class Fields:
    """Names of the input fields; the defaults are those of just-eval and URIAL output files."""

    id: str = "id"
    instruction: str = "pure_input"
    prompt: str = "input"
    answer: str = "output"


@dataclass(frozen=True)
class Example:
    """One aligned answer to score. `prompt` is the aligned model's full prompt, if the file has it."""

    index: int
    id: str
    instruction: str
    prompt: str | None
    answer: str


def _parse(path: Path, text: str) -> list[object]:
    """JSON list, or JSONL objects (one per non-empty line)."""
    stripped = text.lstrip()
    if not stripped:
        raise TdsError(f"{path}: the file is empty: no examples")
    if stripped[0] == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise TdsError(
                f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting too deep
            raise TdsError(f"{path}: invalid JSON ({first_line(e)})") from None
        return records
    if stripped[0] != "{":
        raise TdsError(
            f"{path}: the top level must be a JSON list of objects or JSONL (one object per line)"
        )
    records = []
    # Lines end at "\n" only: JSON strings may hold U+2028, U+0085 and the like unescaped, at
    # which str.splitlines() would cut a valid line in two (a trailing "\r" is JSON whitespace).
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if _is_one_object(text):
                raise TdsError(
                    f"{path}: the top level is one JSON object spread over several lines; expected"
                    " a JSON list of objects or JSONL (one object per line)"
                ) from None
            raise TdsError(
                f"{path}: JSONL line {lineno} does not parse (column {e.colno}: {e.msg})"
            ) from None
        except (ValueError, RecursionError) as e:
            raise TdsError(
                f"{path}: JSONL line {lineno} does not parse ({first_line(e)})"
            ) from None
    return records


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _check_unicode(where: str, name: str, value: str) -> None:
    """JSON's `\\ud800` escapes can make strings no tokenizer (nor UTF-8) can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TdsError(
            f"{where}: field '{name}' holds an unpaired surrogate (a lone \\u{ord(value[e.start]):04x}"
            f" escape) at character {e.start}"
        ) from None


SKIP_HINT = " (--skip-empty-answers leaves such examples out)"


class EmptyAnswer(TdsError):
    """An example whose answer is empty: refused, or left out with `--skip-empty-answers`."""


def _example(
    path: Path, index: int, record: object, fields: Fields, require_answer: bool = True
) -> Example:
    if isinstance(record, str) and not require_answer:  # a plain list of instructions
        if not record.strip():
            raise TdsError(f"{path}: example {index}: the instruction is empty")
        _check_unicode(f"{path}: example {index}", "instruction", record)
        return Example(index=index, id=str(index), instruction=record, prompt=None, answer="")
    if not isinstance(record, dict):
        raise TdsError(f"{path}: example {index}: is a {type(record).__name__}, not a JSON object")
    raw_id = record.get(fields.id, None)
    where = f"{path}: example {index}" + ("" if raw_id is None else f" (id {raw_id!r})")
    if raw_id is None:
        raise TdsError(f"{where}: field '{fields.id}' is missing")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise TdsError(f"{where}: field '{fields.id}' must be a string or an integer")
    if isinstance(raw_id, str) and not raw_id.strip():
        raise TdsError(f"{where}: field '{fields.id}' is empty")
    if isinstance(raw_id, str):
        _check_unicode(where, fields.id, raw_id)

    def text_field(name: str, required: bool) -> str | None:
        if name not in record:
            if required:
                raise TdsError(f"{where}: field '{name}' is missing")
            return None
        value = record[name]
        if not isinstance(value, str):
            raise TdsError(f"{where}: field '{name}' must be a string, not {type(value).__name__}")
        _check_unicode(where, name, value)
        return value

    instruction = text_field(fields.instruction, required=True)
    prompt = text_field(fields.prompt, required=False)
    if not require_answer:
        assert instruction is not None
        return Example(
            index=index, id=str(raw_id), instruction=instruction, prompt=prompt, answer=""
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
    _check_unicode(where, fields.answer, answer)
    assert instruction is not None
    return Example(
        index=index, id=str(raw_id), instruction=instruction, prompt=prompt, answer=answer
    )


def load_examples(
    path: Path | str,
    fields: Fields = Fields(),
    limit: int | None = None,
    require_answer: bool = True,
    skipped: list[str] | None = None,
) -> list[Example]:
    """All examples of a JSON or JSONL file, validated; the first `limit` if given.

    The whole file is validated even with `limit`, so that a later full run cannot fail on a
    problem that the trial run skipped. With `require_answer=False` (prompts for generation) the
    answer field is not read and a plain JSON list of instruction strings is accepted too.
    With a `skipped` list, examples whose answer is empty (a model that stopped at once) are left
    out and their ids appended to it, instead of refusing the file; `limit` still counts the
    file's first records.
    """
    path = Path(path)
    if not path.exists():
        raise TdsError(f"{path}: data file not found")
    try:
        # utf-8-sig: a byte order mark (as some Windows tools write) is dropped, not parsed.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise TdsError(f"{path}: cannot read the data file ({e.__class__.__name__}: {e})") from None
    records = _parse(path, text)
    if not isinstance(records, list):
        raise TdsError(f"{path}: the top level must be a JSON list of objects or JSONL")
    if not records:
        raise TdsError(f"{path}: no examples")
    examples: list[Example] = []
    empty: set[int] = set()
    for i, r in enumerate(records):
        try:
            examples.append(_example(path, i, r, fields, require_answer))
        except EmptyAnswer:
            if skipped is None:
                raise
            examples.append(_example(path, i, r, fields, require_answer=False))
            empty.add(i)
    seen: dict[str, int] = {}
    for ex in examples:
        if ex.id in seen:
            raise TdsError(
                f"{path}: example {ex.index} (id {ex.id!r}): field '{fields.id}' duplicates"
                f" example {seen[ex.id]}"
            )
        seen[ex.id] = ex.index
    examples = examples[:limit] if limit is not None else examples
    if skipped is not None:
        skipped.extend(ex.id for ex in examples if ex.index in empty)
        examples = [ex for ex in examples if ex.index not in empty]
    return examples
