"""Tensor parallelism: DeepSpeed inference AutoTP for the model body, our own head for the vocabulary.

AutoTP (`deepspeed.init_inference(..., replace_with_kernel_inject=False)`) splits the attention and
MLP projections of each decoder layer across a tensor-parallel group and all-reduces their outputs,
so every rank ends up with the full final hidden states. It would also split the LM head, but along
the hidden dimension followed by an all-reduce of the logits: every rank would then hold the whole
`[tokens, V]` logits, which is exactly what `head.py` exists to avoid. So, before DeepSpeed sees the
model, each rank copies its contiguous slice of the output projection's rows and puts a
`VocabParallelHead` (which AutoTP does not recognise as a linear layer, and so leaves alone) where
the LM head was; `head.score_positions` then reduces over the group with O(k x tp) traffic.

Two DeepSpeed-on-CPU details are handled here (they do not arise on CUDA, where DeepSpeed has no
shared-memory all-reduce and reduces over the process group):

- its shared-memory all-reduce is set up only when env `LOCAL_SIZE` equals the world size, and
  crashes (SIGSEGV) when used without that set-up; it also ignores the process group it is given
  and reduces over the whole world. It is therefore correct only when one tensor-parallel group
  spans the whole world on one node; otherwise we make DeepSpeed fall back to the process group's
  all-reduce.
- it leaves a 66 MiB file per rank in /dev/shm and never removes it; we remove the ones our job
  created as soon as every rank has mapped them (and again at exit, should set-up stop half-way).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from tdsdist.engine.head import VocabShard, vocab_slice
from tdsdist.engine.models import output_projection
from tdsdist.errors import TdsError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SHM_DIR = Path("/dev/shm")
#: Name prefix of DeepSpeed's CPU all-reduce buffers: `{prefix}_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}`.
SHM_BUFFER_PREFIX = "deepspeed_allreduce_buffer"


class VocabParallelHead(torch.nn.Module):
    """Stands in for the LM head: this rank's rows `[start, end)` of the output projection.

    It keeps `model.get_output_embeddings().weight` meaningful (this rank's slice, as `Scorer`
    expects under a split vocabulary), lets `.to()` move the slice with the model, and is not an
    `nn.Linear`, so AutoTP does not turn it into a hidden-split head. Calling it raises: a full
    `model(...)` forward would silently give logits over one slice of the vocabulary.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, start: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.start = start

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "the LM head is split by vocabulary across tensor-parallel ranks: score with"
            " tdsdist.engine.head.score_positions on the model's base_model outputs"
        )

    def extra_repr(self) -> str:
        rows, hidden = self.weight.shape
        return f"rows=[{self.start}, {self.start + rows}), hidden={hidden}, bias={self.bias is not None}"


def install_vocab_slice(model: PreTrainedModel, start: int, end: int) -> VocabParallelHead:
    """Copy rows `[start, end)` of the output projection into a `VocabParallelHead` that replaces
    the LM head; returns it.

    A copy, not a view: with tied embeddings the LM head's weight *is* the input embedding, and a
    view would keep the whole matrix alive (and follow whatever DeepSpeed does to the embedding);
    with an untied head, replacing it frees the full matrix once the caller drops its references.
    """
    weight, bias = output_projection(model)
    if end > weight.shape[0]:
        raise TdsError(f"the output projection has {weight.shape[0]} rows, fewer than {end}")
    head = VocabParallelHead(
        weight.detach()[start:end].clone(),
        None if bias is None else bias.detach()[start:end].clone(),
        start,
    )
    return install_head(model, head)


def install_head(model: PreTrainedModel, head: VocabParallelHead) -> VocabParallelHead:
    # transformers leaves both accessors unannotated
    model.set_output_embeddings(head)  # type: ignore[no-untyped-call]
    installed: torch.nn.Module | None = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if installed is not head:
        raise TdsError(f"cannot replace the output layer of {type(model).__name__}")
    return head


def shm_buffer_names(directory: Path = SHM_DIR) -> set[str]:
    """Names of DeepSpeed's shared-memory all-reduce buffers present now."""
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.name.startswith(SHM_BUFFER_PREFIX)}


def job_shm_prefix() -> str:
    """The buffer-name prefix of this torchrun job (DeepSpeed names them after uid, master address
    and port), so that cleanup never touches the buffers of another job on the same node."""
    addr = os.environ.get("MASTER_ADDR", "")
    port = os.environ.get("MASTER_PORT", "")
    return f"{SHM_BUFFER_PREFIX}_{os.getuid()}_{addr}_{port}_"


class ShmBufferCleanup:
    """Removes, when called (and at exit), the buffers of this job that were not there when it was
    made. DeepSpeed maps them once at set-up and never unlinks them; removing a name does not
    disturb the processes that have it mapped. Idempotent, and it never raises: it runs from
    `atexit`, possibly while another rank removes the same files. `removed`: all it removed."""

    def __init__(self, directory: Path = SHM_DIR) -> None:
        self.directory = directory
        self.before = shm_buffer_names(directory)
        self.prefix = job_shm_prefix()
        self.removed: list[str] = []

    def __call__(self) -> list[str]:
        removed = []
        for name in sorted(shm_buffer_names(self.directory) - self.before):
            if not name.startswith(self.prefix):
                continue
            try:
                (self.directory / name).unlink()
                removed.append(name)
            except OSError:  # already removed by a peer, or not ours to remove
                pass
        self.removed += removed
        return removed


_cleanup: ShmBufferCleanup | None = None


def register_shm_cleanup() -> ShmBufferCleanup:
    """Record the buffers present now and remove the new ones at exit; call before DeepSpeed's
    communication backend exists (it creates them). Returns the cleanup, also callable directly."""
    global _cleanup
    if _cleanup is None:
        _cleanup = ShmBufferCleanup()
        atexit.register(_cleanup)
    return _cleanup


def remove_shm_buffers() -> list[str]:
    """Remove this job's new DeepSpeed buffers now; returns the names removed."""
    return [] if _cleanup is None else _cleanup()


def shm_allreduce_is_correct(tp_size: int) -> bool:
    """Whether DeepSpeed's CPU shared-memory all-reduce would reduce over exactly the
    tensor-parallel group: it ignores the group and reduces over the world, so only when the group
    is the world, all on this node."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return tp_size == world == local


def configure_shm_allreduce(tp_size: int) -> bool:
    """Set env `LOCAL_SIZE` for DeepSpeed's CPU all-reduce before its backend initialises; returns
    whether that all-reduce may be used.

    Where it is correct, `LOCAL_SIZE` = `LOCAL_WORLD_SIZE` makes DeepSpeed set it up (without it
    the op runs on unmapped buffers and crashes). Elsewhere `LOCAL_SIZE` is removed so that no
    buffers are made, and `init_deepspeed_comm` turns the op off.
    """
    if shm_allreduce_is_correct(tp_size):
        os.environ["LOCAL_SIZE"] = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        return True
    os.environ.pop("LOCAL_SIZE", None)
    return False


def init_deepspeed_comm(tp_size: int) -> None:
    """Make `deepspeed.comm` wrap the process group the caller already initialised.

    `init_inference` needs it (it sizes the group through `deepspeed.comm`), and creating it is
    where DeepSpeed builds its CPU all-reduce (the first run on a machine compiles it: ~1.5 min on
    2 cores, then cached under ~/.cache/torch_extensions) and sets it up, so the environment must be
    right before. Where that all-reduce would be wrong (see `shm_allreduce_is_correct`), its ISA
    level is set to 0: DeepSpeed's own guard then uses the process group's all-reduce, which
    honours the tensor-parallel group.
    """
    import deepspeed
    import deepspeed.comm.comm as ds_comm

    if not dist.is_initialized():
        raise TdsError(
            "tensor parallelism needs torch.distributed initialised (run under torchrun)"
        )
    first = ds_comm.cdb is None
    if first:
        register_shm_cleanup()
        usable = configure_shm_allreduce(tp_size)
    else:  # set up earlier (another model, or someone else): usable if set up for this layout
        usable = shm_allreduce_is_correct(tp_size) and os.environ.get("LOCAL_SIZE") == str(
            dist.get_world_size()
        )
    deepspeed.init_distributed(verbose=False)
    if not usable and ds_comm.cdb is not None:
        ds_comm.cdb.shm_vector_kernel_level = 0
    if first:
        # Each rank maps every peer's buffer while DeepSpeed sets up; once all have passed this
        # barrier the names are no longer needed (the mappings stay), so remove them now rather
        # than only at exit, which a SIGTERM or SIGKILL would skip.
        dist.barrier()
        remove_shm_buffers()


class _TensorParallelUnit:
    """The `mpu` DeepSpeed's inference engine accepts. Without one it ignores `tp_group` and makes
    a group of global ranks `0 .. tp-1`, wrong for every other group when there is data parallelism;
    with one it takes our group (and needs `tp_group` in the config too, for the layers)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.group

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(self.group)

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(self.group)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The weights' dtype. DeepSpeed's inference config defaults to float16 and would convert."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _check_head_left_alone(model: torch.nn.Module) -> None:
    """Refuse a model in which AutoTP split an output head after all (a name we did not replace)."""
    from deepspeed.module_inject.layers import LmHeadLinearAllreduce

    for name, module in model.named_modules():
        if isinstance(module, LmHeadLinearAllreduce):
            raise TdsError(f"AutoTP split {name!r} by the hidden dimension; expected no LM head")


def shard_for_tp(
    model: PreTrainedModel,
    vocab_size: int,
    tp_group: dist.ProcessGroup,
    tp_size: int,
    tp_rank: int,
    device: torch.device,
) -> tuple[PreTrainedModel, torch.Tensor, torch.Tensor | None, VocabShard]:
    """Split `model` across `tp_group`: the body by AutoTP, the output projection by vocabulary.

    Every rank of the world must call this at the same time, for each model, in the same order
    (DeepSpeed broadcasts over the world inside). Returns the model, whose
    `.base_model(input_ids=..., attention_mask=..., use_cache=False).last_hidden_state` is the full
    final hidden states on every rank, and this rank's `(weight, bias)` rows of the output
    projection with the `VocabShard` that `head.score_positions` reduces over.
    """
    check_group(tp_group, tp_size, tp_rank)
    start, end = vocab_slice(vocab_size, tp_rank, tp_size)
    head = install_vocab_slice(model, start, end)  # before AutoTP touches the model
    model = autotp(model, tp_group, tp_size, device)
    return model, head.weight, head.bias, VocabShard(start, tp_group, vocab_size)


def check_group(tp_group: dist.ProcessGroup, tp_size: int, tp_rank: int) -> None:
    if dist.get_world_size(tp_group) != tp_size or dist.get_rank(tp_group) != tp_rank:
        raise TdsError(
            f"tensor-parallel rank {tp_rank} of {tp_size} disagrees with the group"
            f" (rank {dist.get_rank(tp_group)} of {dist.get_world_size(tp_group)})"
        )


def autotp(
    model: PreTrainedModel,
    tp_group: dist.ProcessGroup,
    tp_size: int,
    device: torch.device,
    **checkpoint: object,
) -> PreTrainedModel:
    """DeepSpeed AutoTP over our group; `checkpoint`/`base_dir` make it load shard by shard."""
    import deepspeed

    init_deepspeed_comm(tp_size)
    engine = deepspeed.init_inference(
        model,
        tensor_parallel={
            "tp_size": tp_size,
            "tp_group": tp_group,
            "mpu": _TensorParallelUnit(tp_group),
        },
        dtype=_model_dtype(model),
        replace_with_kernel_inject=False,
        **checkpoint,
    )
    model = engine.module
    unloaded = [name for name, p in model.named_parameters() if p.is_meta]
    if unloaded:  # a layer type DeepSpeed's shard loader does not know
        raise TdsError(
            f"DeepSpeed's shard-by-shard loading left {len(unloaded)} weights unloaded (e.g."
            f" {unloaded[0]!r}); this architecture needs the whole-model loading path"
        )
    model = model.to(device).eval()  # type: ignore[arg-type]  # as in `models.load_model`
    _check_head_left_alone(model)
    return model
