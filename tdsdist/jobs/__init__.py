"""The jobs that drive the stages: `score` (with `prepare` and `resume`), `generate`, `nudge`,
`demo`. Every job that runs the model pair resolves it once (`pair.ResolvedPair`); the decoding
jobs share their parts folder, claim loop and assembly (`parts`).

Entry points for torchrun are `tdsdist/score.py`, `tdsdist/generate.py` and `tdsdist/nudge.py`;
the CLI calls the same `run_*` functions.
"""
