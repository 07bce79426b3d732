"""Files that are either whole or absent, and file fingerprints.

Everything tdsdist writes for later (stores, answers files, generation parts, reports, the demo's
converted model) is built under a temporary name beside its destination and renamed into place
in one step, so that a crash, a kill or a full disk never leaves a half-written file where a
reader (or a resumed run) would trust it. The rename is atomic because both names live in one
folder, hence on one file system.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tdsdist.errors import TdsError


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (data files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path | str) -> Iterator[Path]:
    """An empty folder beside `target` to build it in; removed on exit unless `publish`ed.

    Readable by all (mkdtemp makes folders private, the finished one should not be).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, target: Path, replace: bool = False) -> bool:
    """Rename the `staged` folder to `target`; whether it was moved.

    An existing `target` is left alone (returns False) unless `replace`, in which case it is moved
    aside first and deleted after the swap. Returns False too when another process created
    `target` between the check and the rename (e.g. two array tasks racing to create one store).
    """
    if target.exists():
        if not replace:
            return False
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old / "previous", target)  # put the old one back: nothing is lost
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.replace(staged, target)
    except OSError:
        if target.exists():
            return False
        raise
    return True


@contextmanager
def staged_file(target: Path | str) -> Iterator[Path]:
    """A temporary sibling path to write `target` into, renamed onto `target` when the block
    ends without an error; on an error (or a kill before the rename) `target` is as it was.

    For files written in many steps (a Parquet table row group by row group), where
    `write_atomic`'s one `bytes` would not fit in memory."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def check_out_folder(out: Path, marker: str, what: str) -> None:
    """Refuse an output folder that is neither new, empty, nor an earlier `what` (its `marker`
    file says so): the command replaces that folder whole, and must never replace a user's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TdsError(f"{out}: exists and is not a folder")
    if any(out.iterdir()) and not (out / marker).exists():
        raise TdsError(f"{out}: folder is not empty and is not {what}; give a new or empty folder")
