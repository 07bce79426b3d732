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

import torch
import torch.distributed as dist

from tdsdist.engine.head import VocabShard
from tdsdist.engine.models import output_projection
from tdsdist.engine.scorer import Scorer
from tdsdist.errors import TdsError

SHM_DIR = Path("/dev/shm")
#: Name prefix of DeepSpeed's CPU all-reduce buffers: `{prefix}_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank}`.
SHM_BUFFER_PREFIX = "deepspeed_allreduce_buffer"


def vocab_slice(vocab_size: int, tp_rank: int, tp_size: int) -> tuple[int, int]:
    """`[start, end)` of this rank's rows: contiguous, sizes differing by at most one, covering
    exactly `[0, vocab_size)` (the tokenizer's vocabulary: padding rows belong to no rank).

    Balanced rather than `ceil(V / tp)` blocks so that no rank is left with a sliver (or nothing)
    and the per-rank head cost is as even as the vocabulary allows.
    """
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ValueError(f"tensor-parallel rank {tp_rank} is not in [0, {tp_size})")
    if vocab_size < tp_size:
        raise ValueError(f"cannot split a vocabulary of {vocab_size} across {tp_size} ranks")
    base, extra = divmod(vocab_size, tp_size)
    start = tp_rank * base + min(tp_rank, extra)
    return start, start + base + (1 if tp_rank < extra else 0)


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


def install_vocab_slice(model: torch.nn.Module, start: int, end: int) -> VocabParallelHead:
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
    return _install_head(model, head)


def _install_head(model: torch.nn.Module, head: VocabParallelHead) -> VocabParallelHead:
    model.set_output_embeddings(head)
    if model.get_output_embeddings() is not head:
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
    model: torch.nn.Module,
    vocab_size: int,
    tp_group: dist.ProcessGroup,
    tp_size: int,
    tp_rank: int,
    device: torch.device,
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None, VocabShard]:
    """Split `model` across `tp_group`: the body by AutoTP, the output projection by vocabulary.

    Every rank of the world must call this at the same time, for each model, in the same order
    (DeepSpeed broadcasts over the world inside). Returns the model, whose
    `.base_model(input_ids=..., attention_mask=..., use_cache=False).last_hidden_state` is the full
    final hidden states on every rank, and this rank's `(weight, bias)` rows of the output
    projection with the `VocabShard` that `head.score_positions` reduces over.
    """
    _check_group(tp_group, tp_size, tp_rank)
    start, end = vocab_slice(vocab_size, tp_rank, tp_size)
    head = install_vocab_slice(model, start, end)  # before AutoTP touches the model
    model = _autotp(model, tp_group, tp_size, device)
    return model, head.weight, head.bias, VocabShard(start, tp_group, vocab_size)


def _check_group(tp_group: dist.ProcessGroup, tp_size: int, tp_rank: int) -> None:
    if dist.get_world_size(tp_group) != tp_size or dist.get_rank(tp_group) != tp_rank:
        raise TdsError(
            f"tensor-parallel rank {tp_rank} of {tp_size} disagrees with the group"
            f" (rank {dist.get_rank(tp_group)} of {dist.get_world_size(tp_group)})"
        )


def _autotp(
    model: torch.nn.Module,
    tp_group: dist.ProcessGroup,
    tp_size: int,
    device: torch.device,
    **checkpoint: object,
) -> torch.nn.Module:
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
    model = model.to(device).eval()
    _check_head_left_alone(model)
    return model


def safetensors_files(folder: str | Path) -> list[str]:
    """The checkpoint's safetensors files (names inside `folder`), or [] if it has none."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}


def checkpoint_dtype(folder: str | Path) -> torch.dtype | None:
    """The dtype of the first floating-point tensor in the checkpoint's safetensors files."""
    from safetensors import safe_open

    for name in safetensors_files(folder):
        with safe_open(Path(folder) / name, framework="pt") as f:
            for key in f.keys():
                dtype = _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def loads_shard_by_shard(folder: str | Path, dtype: torch.dtype) -> bool:
    """Whether `load_sharded_for_tp` is the lighter way to load `folder` in `dtype`.

    Measured (`tools/bench_tp_load.py`, docs/benchmarks.md): when the files already hold `dtype`,
    transformers maps them into memory and the whole-model path copies only each rank's slices,
    the rest staying page cache that all ranks of a node share, which is lighter than DeepSpeed's
    shard loader. When the weights must be converted (a bf16 checkpoint scored in float32, the
    default), the whole path makes a private converted copy of the whole model on every rank;
    shard by shard, only this rank's share and one file are converted.
    """
    stored = checkpoint_dtype(folder)
    return stored is not None and stored != dtype


def load_sharded_for_tp(
    folder: str | Path,
    dtype: torch.dtype,
    vocab_size: int,
    tp_group: dist.ProcessGroup,
    tp_size: int,
    tp_rank: int,
    device: torch.device,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None, VocabShard]:
    """What `shard_for_tp` returns, without ever holding the whole model on this rank.

    Why: loading whole, each rank makes a private copy of every weight that changes dtype (140 GB
    per rank for Llama-2-70b's float16 files scored in bfloat16; see `loads_shard_by_shard` for
    when the whole path is the lighter one). Here the model is built with its weights on
    the meta device (buffers such as RoPE's frequencies real), this rank's rows of the output
    projection are read straight from the checkpoint, and DeepSpeed loads the body one
    safetensors file at a time, keeping this rank's slice of each split layer. Peak host memory
    is one checkpoint file plus this rank's share. Safetensors only: DeepSpeed would unpickle
    `.bin` files.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_group(tp_group, tp_size, tp_rank)
    files = safetensors_files(folder)
    if not files:
        raise TdsError(f"{folder}: no .safetensors files to load shard by shard")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    start, end = vocab_slice(vocab_size, tp_rank, tp_size)
    weight, bias = _checkpoint_rows(model, Path(folder), files, start, end, dtype)
    head = _install_head(model, VocabParallelHead(weight, bias, start))
    checkpoint = {"checkpoints": files, "type": "ds_model", "version": 1.0}
    model = _autotp(model, tp_group, tp_size, device, checkpoint=checkpoint, base_dir=str(folder))
    return model, head.weight, head.bias, VocabShard(start, tp_group, vocab_size)


def _ties_embeddings(model: torch.nn.Module) -> bool:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def _checkpoint_rows(
    model: torch.nn.Module, folder: Path, files: list[str], start: int, end: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows `[start, end)` of the output projection (and its bias), read from the checkpoint.

    The projection may be stored under the LM head's name or, with tied embeddings, only under
    the input embedding's (a model built on the meta device is not tied yet): both are tried.
    """
    from safetensors import safe_open

    head = model.get_output_embeddings()
    where = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as f:
            where.update({key: name for key in f.keys()})

    def rows(candidates: tuple[torch.Tensor, ...], what: str) -> torch.Tensor:
        params = model.named_parameters(remove_duplicate=False)
        names = [n for n, p in params if any(p is t for t in candidates)]
        found = [n for n in names if n in where]
        if not found:
            raise TdsError(f"{folder}: the checkpoint has no {what} (looked for {names})")
        with safe_open(folder / where[found[0]], framework="pt") as f:
            part = f.get_slice(found[0])[start:end]
        if part.shape[0] != end - start:
            raise TdsError(f"{folder}: {found[0]} has fewer than {end} rows")
        return part.to(dtype).contiguous()

    weight = (
        (head.weight, model.get_input_embeddings().weight)
        if _ties_embeddings(model)
        else (head.weight,)
    )
    bias = getattr(head, "bias", None)
    return rows(weight, "output projection"), None if bias is None else rows((bias,), "head bias")


class TPScorer(Scorer):
    """`Scorer` over a model from `shard_for_tp`: its vocabulary slice, and a top-k that every
    rank's slice can supply (the all-gather needs equal shapes)."""

    def __init__(
        self,
        model: torch.nn.Module,
        vocab_size: int,
        top_k: int,
        chunk_bytes: int,
        max_tokens_per_batch: int,
        device: torch.device,
        shard: VocabShard,
        projection: tuple[torch.Tensor, torch.Tensor | None],
    ) -> None:
        super().__init__(
            model, vocab_size, top_k, chunk_bytes, max_tokens_per_batch, device, shard, projection
        )
        smallest = vocab_size // shard.world
        if top_k > smallest:  # each rank's local top-k must have the same shape for all_gather
            raise TdsError(
                f"--top-k {top_k} exceeds the smallest vocabulary slice ({smallest} rows)"
            )
