"""Can the run write where it is asked to? Checked before any model loads.

Loading two large models takes minutes; a store on a read-only mount, in an immutable folder, or
under a parent that cannot be created should cost the user a second, not those minutes. So every
command that writes (`score`, `generate`, `nudge`) checks its outputs' folders first, and says in
one line what to do.

`os.access(W_OK)` is enough for the check: it answers EROFS for a read-only mount and EPERM for
an immutable folder even to root (who ignores permission bits, and so can write where it says
yes). Only the folders a run writes into are looked at (the root, every array and group, their
chunk folders, the claims), never the chunk tree below them.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from tdsdist.errors import TdsError
from tdsdist.store.schema import BYTES_PER_POSITION, NEW_STORE_BYTES

#: What a full disk or an exhausted quota raises.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _fault(path: Path, code: int) -> TdsError:
    return TdsError(
        f"{path}: cannot write here ({os.strerror(code)}: a read-only mount, an immutable folder"
        " or missing permissions); give a writable location, or make it writable"
    )


def _writable(path: Path) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_mount(path) else errno.EACCES
        raise _fault(path, code)


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_creatable(path: Path | str) -> None:
    """A file or folder `path` can be made (its nearest existing ancestor is a writable folder)
    or, when it exists, written (a file) or written into (a folder: `check_store_writable`)."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        if path.is_dir():
            check_store_writable(path)
        elif not os.access(path, os.W_OK):
            raise _fault(path, errno.EROFS if _read_only_mount(path) else errno.EACCES)
        _writable(path.parent)  # files are replaced by a rename in their folder
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TdsError(f"{path}: cannot be made: {parent} is a file, not a folder")
    _writable(parent)


def check_store_writable(store: Path | str) -> None:
    """An existing folder (a store, a parts folder) and the folders a run writes into are
    writable; a path that does not exist yet can be made."""
    store = Path(store).expanduser().absolute()
    if not store.is_dir():
        check_creatable(store)
        return
    for folder, dirs, files in os.walk(store):
        here = Path(folder)
        _writable(here)
        if "c" in dirs and "zarr.json" in files:
            dirs.remove("c")  # a chunk tree: only its top folder is written into directly
            _writable(here / "c")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def no_space(e: OSError, store: Path | str, positions: int, new: bool = False) -> TdsError | None:
    """The one line for a full disk (None for any other error): how much the `positions` still
    to write need (`BYTES_PER_POSITION` each, roughly; `NEW_STORE_BYTES` more for a store not
    made yet) against what is free there now."""
    if e.errno not in NO_SPACE:
        return None
    where = Path(store).expanduser().absolute()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{_size(shutil.disk_usage(probe).free)} free"
    except OSError:
        free = "free space unknown"
    return TdsError(
        f"{where}: no space left on the device (or quota): the {positions} positions still to"
        f" score need about {_size(positions * BYTES_PER_POSITION)}"
        f"{f' and a new store {_size(NEW_STORE_BYTES)} more' if new else ''}, {free}; free space and"
        " re-run the same command: committed units are kept, the rest is scored again"
    )
