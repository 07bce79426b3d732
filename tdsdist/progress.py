"""Progress that shows in a terminal and in a cluster log alike.

On a terminal: tqdm's bar, as before. Off a terminal (a SLURM job's log file, `nohup`, a pipe),
tqdm's bar would be disabled and the log would show nothing between "units to do" and the end
of a job that may run for hours, so one plain line is written per interval instead:

    tdsdist: scoring 41.2% (18,304 / 44,416 pos), 231 pos/s, about 1 min 53 s left

The interval is `TDSDIST_PROGRESS_SECONDS` (default 60). Only rank 0 reports.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

INTERVAL_ENV = "TDSDIST_PROGRESS_SECONDS"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class Progress:
    """Counts done out of `total` (positions or examples); `update` adds, `reach` sets."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.printed = 0
        self.clock = clock
        self.start = self.last = clock()
        if interval is None:
            interval = float(os.environ.get(INTERVAL_ENV, "60"))
        self.interval = interval
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.reach(self.done + n)

    def reach(self, done: int) -> None:
        """Set the count (a job-wide total gathered from other ranks never goes backwards)."""
        self.done = max(self.done, done)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.refresh()
            return
        now = self.clock()
        if now - self.last >= self.interval and self.done != self.printed:
            self.last, self.printed = now, self.done
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.start, 1e-9)
        rate = self.done / elapsed
        share = 100 * self.done / self.total if self.total else 100.0
        left = f", about {_duration((self.total - self.done) / rate)} left" if rate > 0 else ""
        return (
            f"tdsdist: {self.desc} {share:.1f}% ({self.done:,} / {self.total:,} {self.unit}),"
            f" {rate:,.0f} {self.unit}/s{left}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
