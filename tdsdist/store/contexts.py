"""What the models saw, per example, kept in the store: the instruction and both contexts' ids.

A result is only as readable as its inputs: a shifted token means little without the prompt
before it, and the template (a system prompt, a doubled BOS, a URIAL prefix) is exactly what one
wants to check when a number looks wrong. So the store keeps, beside the answers, the ids each
model was given before the first answer token (after any `--truncate-context` cut), and the
bare instruction:

    contexts/instruction          [E] str (vlen UTF-8)
    contexts/<model>/ids          [C] int32   every example's context ids, concatenated
    contexts/<model>/offset       [E + 1] int64  example e's context is ids[offset[e]:offset[e+1]]

Every array carries a crc32c checksum, as the per-position arrays do. The group is optional:
stores made before it existed (format 1, and format 2 stores of earlier releases) have none, and
a store recorded by `generate` has no `base` context until `score` gives it a base template; every
reader then gets None ("not recorded"). Adding it changes no format version: nothing that reads or
resumes a store depends on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import zarr

from tdsdist.errors import TdsError
from tdsdist.files import publish, staged_folder
from tdsdist.store.reader import Store
from tdsdist.store.schema import CHECKSUM, COMPRESSOR, MODELS

GROUP = "contexts"
CHUNK_TOKENS = 1 << 18  # context ids per chunk (1 MiB of int32): a few examples' worth per read
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class ExampleContexts:
    """Per example, in store order: the instruction and each model's context ids (None: not
    known when the store is made, as the base context of a store recorded by `generate`)."""

    instructions: Sequence[str]
    aligned: Sequence[Sequence[int]] | None
    base: Sequence[Sequence[int]] | None

    def write(self, root: zarr.Group) -> None:
        """Into a store being created (`store.create` calls it inside its staging folder)."""
        group = root.create_group(GROUP)
        n = len(self.instructions)
        group.create_array(
            "instruction",
            shape=(n,),
            chunks=(max(n, 1),),
            dtype=str,
            compressors=[COMPRESSOR, CHECKSUM],
            dimension_names=("example",),
        )[:] = np.array(list(self.instructions), dtype=object)
        for model in MODELS:
            ids = getattr(self, model)
            if ids is not None:
                _write_ragged(group.create_group(model), model, ids)


def _write_ragged(group: zarr.Group, model: str, contexts: Sequence[Sequence[int]]) -> None:
    lengths = np.array([len(c) for c in contexts], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(
        [np.asarray(c, dtype=np.int32) for c in contexts] + [np.zeros(0, np.int32)]
    )
    group.create_array(
        "ids",
        shape=flat.shape,
        chunks=(max(min(len(flat), CHUNK_TOKENS), 1),),
        dtype="int32",
        fill_value=-1,
        dimension_names=(f"{model}_context_token",),
        compressors=[COMPRESSOR, CHECKSUM],
    )[:] = flat
    group.create_array(
        "offset",
        shape=offset.shape,
        chunks=(len(offset),),
        dtype="int64",
        dimension_names=("example_bound",),
        compressors=[COMPRESSOR, CHECKSUM],
    )[:] = offset  # written last: a reader trusts the ids once the offsets are there


def add_contexts(store: Store, model: str, contexts: Sequence[Sequence[int]]) -> bool:
    """Add one model's contexts to a store that has the group but not that model (the base
    contexts of a store recorded by `generate`, once `score` names the base template).

    Built beside the store's group and renamed into place in one step, so a reader never sees it
    half-written and two array tasks adding it at once leave one copy; returns whether this call
    added it."""
    folder = store.path / GROUP
    if not folder.is_dir() or (folder / model).exists():
        return False
    with staged_folder(folder / model) as tmp:
        _write_ragged(zarr.open_group(tmp, mode="w"), model, contexts)
        return publish(tmp, folder / model)


class StoredContexts:
    """Reads the group of a store; each method returns None for what the store does not hold."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.group = store.group(GROUP) if GROUP in store.root else None

    @property
    def recorded(self) -> bool:
        return self.group is not None

    @cached_property
    def instructions(self) -> list[str] | None:
        if self.group is None or "instruction" not in self.group:
            return None
        return [str(x) for x in self._read("instruction")]

    def instruction(self, index: int) -> str | None:
        return None if self.instructions is None else self.instructions[index]

    def has(self, model: str) -> bool:
        return self.group is not None and f"{model}/offset" in self.group

    @cached_property
    def _offsets(self) -> dict[str, np.ndarray]:
        return {m: self._read(f"{m}/offset") for m in MODELS if self.has(m)}

    def ids(self, index: int, model: str) -> np.ndarray | None:
        """`[C_e]` int32: the ids `model` saw before example `index`'s first answer token."""
        if model not in self._offsets:
            return None
        lo, hi = self._offsets[model][index : index + 2]
        return self._read(f"{model}/ids", slice(int(lo), int(hi)))

    def _read(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """A damaged chunk is an error naming the array, never other text or ids."""
        assert self.group is not None  # callers check `recorded` / `has`
        member = self.group[name]
        if not isinstance(member, zarr.Array):
            raise TdsError(f"{self.store.path}: {GROUP}/{name}: a group where an array belongs")
        try:
            return np.asarray(member[rows])
        except ValueError as e:
            if "checksum" not in str(e):
                raise
            raise TdsError(
                f"{self.store.path}: {GROUP}/{name}: damaged data (checksum mismatch); the"
                " contexts are written once, when the store is made: restore the store from a copy"
                " (the scores do not depend on this group)"
            ) from None


def decode_context(tokenizer: Any, ids: np.ndarray) -> str:
    """The context as text with its template visible: special tokens kept (a BOS, `[INST]`,
    chat markers), and no clean-up of spaces, so the text shows what the ids are."""
    return str(
        tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
    )
