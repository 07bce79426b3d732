"""Parallelism for the engine and the jobs: layout, groups, claims, tensor-parallel loading.

`dist` (world = tp x dp, groups, dynamic unit claims, SIGTERM), `loading` (the one per-rank
loader), `tp` (DeepSpeed AutoTP for the body, our vocabulary slices for the head), `tp_load`
(shard-by-shard loading). DeepSpeed is imported only on the tensor-parallel paths.
"""
