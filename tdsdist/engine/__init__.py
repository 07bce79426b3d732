"""Stage 2, the engine: one model seam and the scoring head.

`runner.ModelRunner` is where a model runs (body, projection of chosen rows, prefix cache); the
scoring job drives it through `scorer.Scorer` (teacher-forced batches) and the generation job
through `decoder.Decoder`. `head` turns hidden states into per-position statistics without a
`[T, V]` tensor, vocabulary-parallel ready. `reference` is the float64 per-token reference.
"""
