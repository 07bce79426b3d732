"""What a command may replace: only what tdsdist itself wrote, never a user's file or folder.

Why: `--overwrite` (and `export -o`, `generate --out`) replace their destination whole. A typo in
a path on a shared file system must not delete a folder of unrelated files, a dataset or a model:
each check below looks at the destination's own bytes (a store's root `zarr.json` with its
`tdsdist` attributes, a Parquet file's magic, a generated answers file's records) and refuses
anything else with one line, before anything is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from tdsdist.errors import TdsError

#: A Parquet file starts and ends with these four bytes.
PARQUET_MAGIC = b"PAR1"


def is_tdsdist_store(path: Path) -> bool:
    """Whether `path` is a folder whose root `zarr.json` is a zarr group with `tdsdist` attributes
    (a damaged or truncated root is not recognised: it is refused, not deleted)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("node_type") == "group"
        and isinstance(meta.get("attributes"), dict)
        and "tdsdist" in meta["attributes"]
    )


def check_replaceable_store(path: Path | str) -> None:
    """Refuse to `--overwrite` anything but a tdsdist store (absent is fine: nothing to replace)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise TdsError(
            f"{path}: --overwrite replaces only a tdsdist store, and this is not a folder;"
            " nothing was changed (give another --store, or remove it yourself)"
        )
    if not is_tdsdist_store(path):
        raise TdsError(
            f"{path}: --overwrite replaces only a tdsdist store, and this folder is not one (no"
            " readable zarr.json with tdsdist attributes); nothing was changed (give another"
            " --store, or remove it yourself)"
        )


def check_replaceable_parquet(path: Path | str) -> None:
    """`export -o`: an existing file is replaced only when it is a Parquet file (what export
    writes); anything else (a script, a dataset in another format) is refused."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise TdsError(f"{path}: exists and is not a file; give a new file name")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TdsError(f"{path}: cannot be read ({e.strerror}); give a new file name") from None
    if path.stat().st_size and head != PARQUET_MAGIC:
        raise TdsError(
            f"{path}: exists and is not a Parquet file, so export will not replace it;"
            " give a new file name, or remove it yourself"
        )


def check_replaceable_answers(path: Path | str) -> None:
    """`generate --out ... --overwrite`: an existing file is replaced only when it is an answers
    file that `generate` wrote (a JSON list whose records carry a `generator` entry)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise TdsError(f"{path}: --overwrite replaces only a generated answers file; not a file")
    try:
        records = json.loads(path.read_bytes())
    except (OSError, ValueError):
        records = None
    ours = isinstance(records, list) and all(
        isinstance(r, dict) and "generator" in r for r in records
    )
    if not ours:
        raise TdsError(
            f"{path}: --overwrite replaces only an answers file written by `tdsdist generate`, and"
            " this is not one; nothing was changed (give another --out, or remove it yourself)"
        )


def check_replaceable_parts(parts: Path | str, marker: str) -> None:
    """`generate`'s unfinished-parts folder is removed by `--overwrite` only when it holds its
    `marker` file (or is empty): a user's folder of that name is refused."""
    parts = Path(parts)
    if not parts.exists():
        return
    if not parts.is_dir() or (any(parts.iterdir()) and not (parts / marker).exists()):
        raise TdsError(
            f"{parts}: --overwrite would remove it, and it is not generate's parts folder (no"
            f" {marker}); nothing was changed (move it away, or give another --out)"
        )
