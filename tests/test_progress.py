"""Progress in a cluster log: one line per interval off a terminal, nothing when disabled."""

from __future__ import annotations

import io

from tdsdist.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_one_line_per_interval_with_rate_and_time_left() -> None:
    log, clock = io.StringIO(), Clock()  # StringIO is not a terminal, as a SLURM log file
    progress = Progress(1000, "scoring", "pos", stream=log, interval=60, clock=clock)
    clock.now = 30
    progress.update(100)  # within the interval: nothing yet
    assert log.getvalue() == ""
    clock.now = 100
    progress.update(150)
    progress.reach(200)  # a job-wide total from the claims store
    clock.now = 200
    progress.reach(150)  # never goes backwards
    progress.update(300)
    lines = log.getvalue().splitlines()
    assert lines == [
        "tdsdist: scoring 25.0% (250 / 1,000 pos), 2 pos/s, about 5 min 0 s left",
        "tdsdist: scoring 55.0% (550 / 1,000 pos), 3 pos/s, about 2 min 44 s left",
    ]


def test_other_ranks_print_nothing() -> None:
    log, clock = io.StringIO(), Clock()
    progress = Progress(10, "generating", "ex", enabled=False, stream=log, interval=0, clock=clock)
    clock.now = 5
    progress.update(5)
    progress.close()
    assert log.getvalue() == "" and progress.done == 5
