"""Unit claims between plain processes on one store: each unit is scored once.

Why: array tasks of a job submitted twice, or two `score` commands on one store, share no
process group; without claims each scores every unit (the store ends right, the work doubles).
A process claims a unit by creating `<store>/.claims/unit-<N>` with `O_CREAT | O_EXCL` (atomic
on local and NFSv3+ file systems), writing its host, pid and time into it, and removes the file
once the unit is committed. While it scores, a thread touches the file every `REFRESH_S`.

A claim expires (and any process may take the unit over) when its process is gone:
- on the same host, at once, when its pid is no longer alive (a SIGKILLed run, then a rerun);
- on any host, when the file was not refreshed for `STALE_S` seconds (a dead node).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

FOLDER = ".claims"
#: Seconds between refreshes of a held claim, and without one after which a claim is stale.
REFRESH_S = 30.0
STALE_S = 600.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(path: Path) -> bool:
    try:
        host, pid, _ = path.read_text().split("\n", 2)
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False  # being written (or just removed): not ours to judge
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return True
    return age > STALE_S


def try_claim(store: Path, unit: int) -> Path | None:
    """The claim file if this process now holds `unit`'s claim, else None (another holds it)."""
    folder = Path(store) / FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / f"unit-{unit}"
    for _ in range(2):  # a stale claim is removed once, then claimed afresh
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()}\n{os.getpid()}\n{time.time():.0f}\n")
        return path
    return None


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Keep a claim fresh while the block runs; release it after (committed or failed)."""
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(REFRESH_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=refresh, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def claim_unit(store: Path, unit: int, committed: Callable[[], bool]) -> Iterator[bool]:
    """Whether this process holds `unit` for the block (claimed, and `committed()` still false:
    another process may have finished it since the pending list was read)."""
    path = try_claim(store, unit)
    if path is None:
        yield False
        return
    with held(path):
        yield not committed()


def run_once(
    folder: Path, done: Callable[[], bool], run: Callable[[], None], wait_s: float
) -> None:
    """`run()` in one of the plain processes sharing `folder` (whoever claims it, as the pseudo
    unit -1); the others wait, looking every `wait_s` seconds, until `done()`. `run` must make
    `done()` true and remove `folder` (a decoding job's assembly removes its parts folder)."""
    while not done():
        try:
            claim = try_claim(folder, -1)
        except FileNotFoundError:  # the folder was just removed: done
            continue
        if claim is not None:
            with held(claim):
                if folder.exists():
                    run()
            return
        time.sleep(wait_s)
