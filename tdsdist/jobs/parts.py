"""What the decoding jobs (`generate`, `nudge`) share: the parts folder of finished units, the
claim loop over the pending ones, the assembly by one process, and the answers file's records.

Each finished unit is saved under `OUT.parts/` (`unit-NNNNNN.json`, plus `.npz` where a job keeps
arrays), written atomically, the JSON last as the commit; `fingerprint.json` names the
configuration the parts belong to, so an interrupted run resumes only with the same one. Once
every unit is saved, one process assembles the answers file (and the store) and removes the parts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tdsdist.errors import TdsError
from tdsdist.files import write_atomic
from tdsdist.inputs.data import Example
from tdsdist.inputs.fingerprint import differences
from tdsdist.jobs.pair import ResolvedPair
from tdsdist.parallel.claims import WAIT_S, claim_loop
from tdsdist.parallel.dist import Dist, broadcast_ints, checked_on_main
from tdsdist.parallel.file_claims import claim_unit, run_once
from tdsdist.safe_replace import (
    check_replaceable_answers,
    check_replaceable_parts,
    check_replaceable_store,
)
from tdsdist.store.fields import select

R = TypeVar("R")
C = TypeVar("C")
X = TypeVar("X")
#: A unit of a decoding job: its example indices and its number.
Unit = tuple[Sequence[int], int]


@dataclass
class DecodingRun(Generic[C, X]):
    """One run of a decoding job, known before any model loads: its configuration `C`, the
    prompts, each one's context(s) `X` (token ids, by example index), the resolved pair, where
    its parts and answers go, and its fingerprint (what the parts belong to)."""

    cfg: C
    examples: list[Example]
    contexts: list[X]
    pair: ResolvedPair
    out: Path
    parts: Path
    fingerprint: dict[str, Any]

    @property
    def tokenizer(self) -> Any:
        """The aligned tokenizer: the answers' text is decoded with it."""
        return self.pair.tokenizer


def part_path(parts: Path, n: int, suffix: str) -> Path:
    """Unit `n`'s file of `suffix` (`json`, the commit; `npz`, its arrays) in the parts folder."""
    return parts / f"unit-{n:06d}.{suffix}"


def prepare_parts(parts: Path, out: Path, cfg: Any, fingerprint: dict[str, Any]) -> None:
    """A fresh parts folder for `fingerprint`, or the unfinished run's of the same; `cfg` (a
    job's configuration) says whether to overwrite, and which store goes with the answers."""
    marker = parts / "fingerprint.json"
    if cfg.overwrite:
        check_replaceable_parts(parts, marker.name)
        check_replaceable_answers(out)
        if cfg.store:
            check_replaceable_store(Path(cfg.store))
        shutil.rmtree(parts, ignore_errors=True)
    if marker.exists():
        diffs = differences(json.loads(marker.read_text()), fingerprint, where="before")
        if diffs:
            raise TdsError(
                f"{parts}: an unfinished run with another configuration ({'; '.join(diffs)});"
                " use --overwrite"
            )
        return
    if out.exists() and not cfg.overwrite:
        raise TdsError(f"{out}: already exists (use --overwrite to generate again)")
    parts.mkdir(parents=True, exist_ok=True)
    write_atomic(marker, json.dumps(fingerprint).encode())


def pending_units(parts: Path, count: int, d: Dist) -> list[int]:
    """The units of `count` without a saved part, as rank 0 sees them (every rank learns it)."""
    pending = None
    if d.is_main:
        pending = [n for n in range(count) if not part_path(parts, n, "json").exists()]
    return broadcast_ints(pending, 0, None, d)


def decode_units(
    d: Dist,
    pending: Sequence[Unit],
    decode: Callable[[Unit], R],
    save: Callable[[Unit, R], None],
    parts: Path,
    label: str,
    by_file: bool,
) -> bool:
    """`claim_loop` over the pending units: the group decodes a claimed unit together, its
    leader saves it. Returns whether SIGTERM stopped it.

    `by_file` (tp 1): other processes on the same parts folder (array tasks, a job submitted
    twice) claim units by file too (`parallel/file_claims.py`); a single process then waits for
    the units others hold (taking over a stale claim), so that every part exists when it returns."""

    def saved(unit: Unit) -> bool:
        return part_path(parts, unit[1], "json").exists()

    @contextmanager
    def guard(unit: Unit) -> Iterator[bool]:
        with ExitStack() as stack:
            try:
                mine = stack.enter_context(claim_unit(parts, unit[1], lambda: saved(unit)))
            except FileNotFoundError:  # another process assembled every unit, removed the parts
                if parts.exists():
                    raise
                mine = False
            try:
                yield mine
            except FileNotFoundError:
                if parts.exists():
                    raise

    def unsaved(unit: Unit) -> bool:  # the parts folder gone: another process assembled them
        return parts.exists() and not saved(unit)

    return claim_loop(
        d,
        pending,
        lambda unit, advance: decode(unit),
        save,
        size=lambda unit: len(unit[0]),
        label=(label, "ex"),
        guard=guard if by_file else None,
        wait=unsaved if by_file else None,
    ).stopped


def assemble_parts(d: Dist, parts: Path, out: Path, assemble: Callable[[], R]) -> R | None:
    """`assemble()` once every unit is saved: on rank 0 under torchrun (a failure there reaches
    every rank, no one waits); among plain processes on one parts folder, in whichever claims it,
    the others waiting until it is done (the answers file written, the parts folder removed).
    Returns what it returned where it ran, None elsewhere."""
    if d.distributed:
        return checked_on_main(d, assemble)
    made: list[R] = []
    run_once(
        parts, lambda: out.exists() and not parts.exists(), lambda: made.append(assemble()), WAIT_S
    )
    return made[0] if made else None


def kept_fields(cfg: Any, examples: Sequence[Example]) -> dict[str, list[Any]]:
    """`--keep-fields` of the prompts' scalar metadata (`store/fields.py`), for `score` to keep."""
    texts = {"id", "pure_input", "input", "output", "generator", "messages"}
    return select([dict(ex.metadata) for ex in examples], cfg.keep_fields, texts, cfg.data)


def answer_records(
    examples: Sequence[Example],
    answers: dict[int, str],
    contexts: dict[int, str],
    settings: dict[str, Any],
    kept: dict[str, list[Any]],
    extra: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The answers file (a just-eval JSON list `score` reads): per example its prompt (the
    aligned context as text), its answer, how it was made (`settings`), the kept fields and a
    job's `extra` keys; a transcript's record is its conversation with the answer as last turn."""
    records = []
    for j, ex in enumerate(examples):
        answer = answers[ex.index]
        record: dict[str, Any] = {"id": ex.id}
        if ex.messages is None:
            record.update(pure_input=ex.instruction, input=contexts[ex.index], output=[answer])
        else:
            record["messages"] = [*ex.messages, {"role": "assistant", "content": answer}]
        record.update(generator=settings, **(extra or {}).get(ex.index, {}))
        record.update({k: v[j] for k, v in kept.items() if v[j] is not None})
        records.append(record)
    return records


def write_answers(out: Path, records: list[dict[str, Any]]) -> None:
    """The answers file, written atomically (indented JSON, text as it is)."""
    write_atomic(out, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
