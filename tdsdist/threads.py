"""One thread pool for numpy work on blocks of rows: decoding (Blosc, crc32c) and numpy release
the GIL, so arrays read and sub-blocks computed in parallel share the cores (the analysis, and
the top-k metrics that `score` computes per unit)."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor


@functools.cache
def pool() -> ThreadPoolExecutor:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ThreadPoolExecutor(max(1, min(8, cores or 1)))
