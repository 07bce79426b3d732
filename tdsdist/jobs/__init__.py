"""The jobs that drive the stages: `score` (with `prepare` and `resume`), `generate`, `demo`.

Entry points for torchrun are `tdsdist/score.py` and `tdsdist/generate.py`; the CLI calls the
same `run_*` functions.
"""
