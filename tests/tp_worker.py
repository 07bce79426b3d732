"""Worker for tests/test_tp.py, run under `torchrun --standalone --nproc_per_node N` (gloo, CPU).

    tp_worker.py INPUT.npz OUTPUT.npz TP MODEL_DIR [MODEL_DIR ...]

Scores the sequences of INPUT (`tokens` flat, `context_lengths`, `answer_lengths`; settings
`vocab_size`, `top_k`, `chunk_bytes`, `max_tokens`; `prefix`: tokens that open every context, to
cache once, or none) under each model split with `tdsdist.parallel.tp` over
tensor-parallel groups of TP consecutive ranks (data parallel across groups: group g scores the
sequences `g::dp`). The second and later models also get the first model's top-k as support, as
in TDS scoring. Rank 0 gathers every group's results and writes OUTPUT with `np.savez`; keys are
`m{i}/{statistic}` plus a few facts about the run (`shm_allreduce`, `embed_rows`, ...).
"""

from __future__ import annotations

import sys
import time

import deepspeed.comm.comm as ds_comm
import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

import tdsdist.parallel.tp as tp_module
from tdsdist.engine.runner import ModelRunner
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.parallel.tp import job_shm_prefix, shard_for_tp, shm_buffer_names


def read_sequences(data) -> list[ContextAnswer]:
    tokens = data["tokens"].tolist()
    sequences, at = [], 0
    for c, a in zip(data["context_lengths"].tolist(), data["answer_lengths"].tolist()):
        sequences.append(ContextAnswer(tokens[at : at + c], tokens[at + c : at + c + a]))
        at += c + a
    return sequences


def tp_groups(tp: int) -> dist.ProcessGroup:
    """This rank's group of `tp` consecutive ranks (every rank creates every group, in order)."""
    mine = None
    for start in range(0, dist.get_world_size(), tp):
        group = dist.new_group(list(range(start, start + tp)))
        if start <= dist.get_rank() < start + tp:
            mine = group
    assert mine is not None
    return mine


def gather_rows(array: np.ndarray, sizes: list[int]) -> np.ndarray | None:
    """Concatenate each group leader's rows on rank 0 (followers send zero rows)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    width = max(sizes)
    padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).numpy()


def main() -> None:
    input_path, output_path, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    folders = sys.argv[4:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group, dp = tp_groups(tp), world // tp
    tp_rank, dp_rank = rank % tp, rank // tp
    data = np.load(input_path)
    settings = {k: int(data[k]) for k in ("vocab_size", "top_k", "chunk_bytes", "max_tokens")}
    sequences = read_sequences(data)
    mine = list(range(dp_rank, len(sequences), dp))
    out: dict[str, np.ndarray] = {"order": np.array(mine, dtype=np.int64)}
    facts: dict[str, float | int | str] = {}
    support = None
    device = torch.device("cpu")
    for m, folder in enumerate(folders):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        start = time.perf_counter()
        model, weight, bias, shard = shard_for_tp(
            model, settings["vocab_size"], group, tp, tp_rank, device
        )
        facts[f"m{m}/shard_seconds"] = time.perf_counter() - start
        facts[f"m{m}/embed_rows"] = model.get_input_embeddings().weight.shape[0]
        facts[f"m{m}/head_rows"] = weight.shape[0]
        facts[f"m{m}/head_type"] = type(model.get_output_embeddings()).__name__
        facts[f"m{m}/q_proj_rows"] = model.model.layers[0].self_attn.q_proj.weight.shape[0]
        facts[f"m{m}/o_proj_type"] = type(model.model.layers[0].self_attn.o_proj).__name__
        runner = ModelRunner(model, settings["vocab_size"], device, shard, (weight, bias))
        scorer = Scorer(runner, settings["top_k"], settings["chunk_bytes"], settings["max_tokens"])
        if data["prefix"].size:  # the shared-prefix key/value cache, as in production
            scorer.runner.set_prefix(data["prefix"].tolist())
        start = time.perf_counter()
        result = scorer.score([sequences[i] for i in mine], support)
        facts[f"m{m}/score_seconds"] = time.perf_counter() - start
        if m == 0:
            bounds = np.cumsum([0] + [len(sequences[i].answer) for i in mine])
            support = [result["top_ids"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        for key, value in result.items():
            out[f"m{m}/{key}"] = value
    # Whether DeepSpeed's shared-memory all-reduce served the body, and what became of its files.
    level = getattr(ds_comm.cdb, "shm_vector_kernel_level", 0)
    facts["shm_allreduce"] = int(
        hasattr(torch.ops.deepspeed, "inference_all_reduce_") and level > 0
    )
    removed = torch.tensor([0 if tp_module._cleanup is None else len(tp_module._cleanup.removed)])
    dist.all_reduce(removed)  # each file is removed by whichever rank gets there first
    facts["shm_buffers_removed"] = int(removed.item())
    facts["shm_buffers_left"] = len(
        [n for n in shm_buffer_names() if n.startswith(job_shm_prefix())]
    )
    # Rank 0 collects the leaders' results, in the order of the sequences' indices.
    leader = tp_rank == 0
    gathered: dict[str, np.ndarray] = {}
    for key, value in sorted(out.items()):
        if not leader:
            value = value[:0]
        counts = torch.zeros(world, dtype=torch.long)
        counts[rank] = value.shape[0]
        dist.all_reduce(counts)
        gathered[key] = gather_rows(value, counts.tolist())
    if rank == 0:
        np.savez(output_path, **gathered, **{f"fact/{k}": np.array(v) for k, v in facts.items()})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
