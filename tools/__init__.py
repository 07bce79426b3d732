"""Benchmarks, profiles and GPU checks of tdsdist; run as modules from the repository root.

    python -m tools.bench.speed --help        # tools/bench/: measured numbers (docs/benchmarks.md)
    python -m tools.profile.head --help       # tools/profile/: where the time or memory goes
    python -m tools.gpu.check --help          # tools/gpu/: the checks for a lent GPU machine
    bash tools/gpu/suite.sh OUT_DIR DATA_DIR  # every GPU check in one call

What they share (the bare forward, model shapes, paths, /proc readings) is in `tools.common`.
"""
