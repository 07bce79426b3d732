"""`claim_loop`: every pending unit worked by its whole group and committed once, by the leader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tdsdist.parallel.claims import claim_loop
from tdsdist.parallel.dist import init_distributed

ROOT = Path(__file__).parent.parent


def test_one_process_works_and_commits_each_unit_once_in_order() -> None:
    d = init_distributed(1, 60, torch.device("cpu"))
    log: list[tuple[str, str, object]] = []
    advanced: list[int] = []

    def work(unit: str, advance) -> str:
        advance(1)
        advanced.append(1)
        log.append(("work", unit, None))
        return unit.upper()

    loop = claim_loop(
        d, ["a", "bb", "ccc"], work, lambda u, r: log.append(("commit", u, r)), size=len
    )
    assert log == [
        ("work", "a", None),
        ("commit", "a", "A"),
        ("work", "bb", None),
        ("commit", "bb", "BB"),
        ("work", "ccc", None),
        ("commit", "ccc", "CCC"),
    ]
    assert (loop.done, loop.stopped) == (6, False) and len(advanced) == 3


def test_sigterm_stops_claiming_after_the_unit_in_hand() -> None:
    d = init_distributed(1, 60, torch.device("cpu"))
    committed: list[int] = []

    def work(unit: int, advance) -> int:
        if unit == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # claim_loop's StopFlag takes it
        return unit

    previous = signal.getsignal(signal.SIGTERM)
    try:
        loop = claim_loop(d, [0, 1, 2, 3], work, lambda u, r: committed.append(u), size=lambda u: 1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert committed == [0, 1] and loop.stopped and loop.done == 2


def test_wait_takes_over_a_unit_another_process_left() -> None:
    """Plain processes sharing units by file (`guard`): with `wait`, a process returns only
    once every unit is finished, taking over one whose holder went away meanwhile."""
    d = init_distributed(1, 60, torch.device("cpu"))
    held, committed = {"b"}, []

    @contextmanager
    def guard(unit: str) -> Iterator[bool]:
        if unit in held:  # another process holds it; its claim is stale at the next look
            held.discard(unit)
            yield False
        else:
            yield unit not in committed

    loop = claim_loop(
        d,
        ["a", "b", "c"],
        lambda unit, advance: unit.upper(),
        lambda unit, result: committed.append(unit),
        size=len,
        guard=guard,
        wait=lambda unit: unit not in committed,
    )
    assert committed == ["a", "c", "b"] and loop.done == 3 and not loop.stopped


def test_four_ranks_two_groups_of_two(tmp_path: Path) -> None:
    """Under torchrun (gloo): a group's ranks work the same units, its leader alone commits
    them, and the two groups' commits are the 9 units, each once; a second loop in the same job
    starts afresh (its own counters in the store) and commits its 5 units, each once."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cmd = [
        torchrun or "torchrun",
        "--nproc-per-node",
        "4",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        str(ROOT / "tests" / "claims_worker.py"),
        str(tmp_path / "rank"),
        "2",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "testkit")]),
    }
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in range(4)]
    for leader, follower in ((ranks[0], ranks[1]), (ranks[2], ranks[3])):
        assert leader["worked"] == follower["worked"]
        assert follower["committed"] == []
        assert leader["committed"] == [[u, u * u] for u in leader["worked"]]
    units = sorted(u for r in (ranks[0], ranks[2]) for u, _ in r["committed"])
    assert units == list(range(9))
    assert all(r["done"] == sum(u + 1 for u in range(9)) for r in ranks)
    assert sorted(u for r in (ranks[0], ranks[2]) for u in r["second"]) == list(range(5))
    assert all(r["second_done"] == 5 for r in ranks)
