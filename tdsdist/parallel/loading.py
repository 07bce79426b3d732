"""One loader for every job: a model as this rank runs it, behind the `ModelRunner` seam.

`score` and `generate` both call `load_runner`; what differs with `--tp` is decided here and
nowhere else (gpt-fast's `_load_model` does the same: load, `if use_tp: apply_tp(model)`, move).
DeepSpeed is imported only on the tensor-parallel paths, so a one-process run never pays for it
(nor prints its accelerator warning).
"""

from __future__ import annotations

import torch

from tdsdist.engine.models import DTYPE, load_model
from tdsdist.engine.runner import ModelRunner
from tdsdist.parallel.dist import Dist


def load_runner(
    name: str,
    revision: str | None,
    *,
    dtype: str,
    vocab_size: int,
    device: torch.device,
    d: Dist,
    trust_remote_code: bool = False,
    head_dtype: str = "model",
) -> ModelRunner:
    """One model, whole on this rank or, under `--tp`, split across its tensor-parallel group.

    Every rank of the world calls this for each model, in the same order (DeepSpeed broadcasts
    over the world inside). Under `--tp`, a local safetensors checkpoint whose weights must
    change dtype is loaded shard by shard, so no rank makes a converted copy of the whole model
    (`tp_load.loads_shard_by_shard` says when); otherwise the model is loaded whole on the CPU
    (memory-mapped files: the page cache, shared by the node's ranks), then split.
    """
    if d.dims.tp == 1:
        model = load_model(name, dtype, device, revision, trust_remote_code)
        return ModelRunner(model, vocab_size, device, head_dtype=head_dtype)
    from tdsdist.parallel.tp import shard_for_tp
    from tdsdist.parallel.tp_load import load_sharded_for_tp, loads_shard_by_shard

    group, tp, rank = d.tp_group, d.dims.tp, d.tp_rank
    assert group is not None  # tp > 1: init made the group
    if revision is None and loads_shard_by_shard(name, DTYPE[dtype]):
        model, weight, bias, shard = load_sharded_for_tp(
            name, DTYPE[dtype], vocab_size, group, tp, rank, device, trust_remote_code
        )
    else:  # loaded whole on the CPU; DeepSpeed moves the shards
        model = load_model(name, dtype, torch.device("cpu"), revision, trust_remote_code)
        model, weight, bias, shard = shard_for_tp(model, vocab_size, group, tp, rank, device)
    return ModelRunner(model, vocab_size, device, shard, (weight, bias), head_dtype)


def load_adapter_runners(
    base: str,
    revision: str | None,
    adapter: str,
    *,
    dtype: str,
    vocab_size: int,
    device: torch.device,
    d: Dist,
    trust_remote_code: bool = False,
    head_dtype: str = "model",
) -> dict[str, ModelRunner]:
    """Both sides of a pair whose aligned model is `base` plus a LoRA adapter, over ONE copy of
    the base weights: `aligned` runs the module with the adapter on, `base` runs the same module
    inside peft's `disable_adapter()`. Each runner keeps its own prefix cache; they share the
    output projection (an adapter of it is refused), so `head_dtype="float32"` copies it once.

    Not under `--tp` (the configuration refuses it up front): AutoTP would split the base
    layers that peft wrapped, not the adapters.
    """
    from tdsdist.engine.adapters import apply_adapter, read_adapter

    assert d.dims.tp == 1, "--aligned-adapter with --tp is refused by the configuration"
    model = load_model(base, dtype, device, revision, trust_remote_code)
    peft_model = apply_adapter(model, read_adapter(adapter))
    aligned = ModelRunner(model, vocab_size, device, head_dtype=head_dtype)
    base_runner = ModelRunner(
        model,
        vocab_size,
        device,
        projection=(aligned.weight, aligned.bias),
        head_dtype=head_dtype,
        body_context=peft_model.disable_adapter,
    )
    return {"aligned": aligned, "base": base_runner}
