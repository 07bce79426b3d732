"""The input's scalar metadata fields, kept per example in the store, for `--group-by`.

Follow-up studies split the shift by prompt group (harmful against benign prompts, Qi et al.
2025; a benchmark's categories or difficulty levels). The data files already carry such fields
beside the texts, so `score` and `generate` keep them:

    fields/<name>   [E] str   one JSON value per example (str, int, float, bool; null where the
                               example's record lacks the field), a crc32c checksum as elsewhere

Which fields (`--keep-fields`): `all` (the default) keeps every field of the records with a
scalar value (str, int, float, bool; `inputs.data.Example.metadata`), null in the records where
it is missing or not a scalar, other than the fields the texts and ids are read from, and leaves out a string field whose values run longer than
`MAX_ALL_CHARS` (a text, not a label: a reference answer, say); `none` keeps none; `a,b` keeps
exactly those, and a named field that no record has, or that holds a list or an object, is an
error. Values are kept as they are (JSON), so a group is the exact value.

The group is optional and outside the fingerprint: the numbers of a store do not depend on it, so
stores made before it existed keep resuming (and have no fields: `--group-by` says so), and a
resumed store keeps the fields it was created with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from tdsdist.errors import TdsError
from tdsdist.store.reader import Store
from tdsdist.store.schema import CHECKSUM, COMPRESSOR

GROUP = "fields"
MAX_ALL_CHARS = 200  # `all`: a longer string value makes the field a text, not a label
_NAME = re.compile(r"^(?!__)(?!\.{1,2}$)[^/]+$")  # a valid Zarr member name


def select(
    records: Sequence[dict[str, Any]], keep: str, text_fields: set[str], where: str
) -> dict[str, list[Any]]:
    """`{name: [E] values}` of the fields `keep` names (`all`, `none`, or `a,b`) among the
    records' scalar fields (`records`: each example's scalar fields, `Example.metadata`)."""
    keep = keep.strip()
    if keep == "none":
        return {}
    present: dict[str, None] = {}
    for r in records:
        present.update(dict.fromkeys(r))
    if keep == "all":
        names = [
            n
            for n in present
            if n not in text_fields
            and _NAME.match(n)
            and all(len(v) <= MAX_ALL_CHARS for r in records if isinstance(v := r.get(n), str))
        ]
    else:
        names = [n.strip() for n in keep.split(",") if n.strip()]
        for n in names:
            if not _NAME.match(n):
                raise TdsError(f"{where}: --keep-fields: {n!r} is not a name a store can keep")
            if n not in present:
                raise TdsError(f"{where}: --keep-fields: no record has a scalar field {n!r}")
    return {n: [r.get(n) for r in records] for n in names}


@dataclass(frozen=True)
class ExampleFields:
    """The kept fields, in store order; written by `store.create` (a `GroupWriter`)."""

    values: dict[str, list[Any]]

    def write(self, root: zarr.Group) -> None:
        if not self.values:
            return
        group = root.create_group(GROUP)
        for name, values in self.values.items():
            n = len(values)
            group.create_array(
                name,
                shape=(n,),
                chunks=(max(n, 1),),
                dtype=str,
                compressors=[COMPRESSOR, CHECKSUM],
                dimension_names=("example",),
            )[:] = np.array([json.dumps(v) for v in values], dtype=object)


@dataclass(frozen=True)
class Writers:
    """Several `GroupWriter`s as one (the contexts and the fields of a new store)."""

    parts: tuple[Any, ...]

    def write(self, root: zarr.Group) -> None:
        for part in self.parts:
            if part is not None:
                part.write(root)


def field_names(store: Store) -> list[str]:
    """The kept fields' names (none for a store made before fields were kept)."""
    if GROUP not in store.root:
        return []
    return sorted(name for name, _ in store.group(GROUP).arrays())


def read_field(store: Store, name: str) -> list[Any]:
    """`[E]` values of one kept field; a missing field is one error line naming the kept ones."""
    names = field_names(store)
    if name not in names:
        kept = (
            ", ".join(names) if names else "none (stores made before tdsdist kept fields have none)"
        )
        raise TdsError(f"{store.path}: no kept field {name!r}; kept fields: {kept}")
    return [json.loads(str(v)) for v in np.asarray(store.array(f"{GROUP}/{name}")[:])]
