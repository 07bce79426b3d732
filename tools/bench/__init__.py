"""Benchmarks behind the numbers in docs/benchmarks.md: `python -m tools.bench.NAME --help`."""
