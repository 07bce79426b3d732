"""Loading a model for tensor parallelism shard by shard, so no rank ever holds all of it.

Why: loading whole, each rank makes a private copy of every weight that changes dtype (140 GB per
rank for Llama-2-70b's float16 files scored in bfloat16). `loads_shard_by_shard` says when this
path is the lighter one (measured in `tools/bench/tp_load.py`, docs/benchmarks.md);
`load_sharded_for_tp` builds the model on the meta device, reads this rank's rows of the output
projection straight from the files, and lets DeepSpeed's AutoTP checkpoint loader fill the body
one safetensors file at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

from tdsdist.engine.head import VocabShard, vocab_slice
from tdsdist.errors import TdsError
from tdsdist.parallel.tp import VocabParallelHead, autotp, check_group, install_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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

    Measured (`python -m tools.bench.tp_load`, docs/benchmarks.md): when the files already hold `dtype`,
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
) -> tuple[PreTrainedModel, torch.Tensor, torch.Tensor | None, VocabShard]:
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

    check_group(tp_group, tp_size, tp_rank)
    files = safetensors_files(folder)
    if not files:
        raise TdsError(f"{folder}: no .safetensors files to load shard by shard")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        # transformers leaves `from_config` unannotated
        model: PreTrainedModel = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    start, end = vocab_slice(vocab_size, tp_rank, tp_size)
    weight, bias = _checkpoint_rows(model, Path(folder), files, start, end, dtype)
    head = install_head(model, VocabParallelHead(weight, bias, start))
    checkpoint = {"checkpoints": files, "type": "ds_model", "version": 1.0}
    model = autotp(model, tp_group, tp_size, device, checkpoint=checkpoint, base_dir=str(folder))
    return model, head.weight, head.bias, VocabShard(start, tp_group, vocab_size)


def _ties_embeddings(model: PreTrainedModel) -> bool:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


def _checkpoint_rows(
    model: PreTrainedModel, folder: Path, files: list[str], start: int, end: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows `[start, end)` of the output projection (and its bias), read from the checkpoint.

    The projection may be stored under the LM head's name or, with tied embeddings, only under
    the input embedding's (a model built on the meta device is not tied yet): both are tried.
    """
    from safetensors import safe_open

    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]  # unannotated upstream
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
            part: torch.Tensor = f.get_slice(found[0])[start:end]
        if part.shape[0] != end - start:
            raise TdsError(f"{folder}: {found[0]} has fewer than {end} rows")
        return part.to(dtype).contiguous()

    weight = (
        (head.weight, cast(torch.Tensor, model.get_input_embeddings().weight))
        if _ties_embeddings(model)
        else (head.weight,)
    )
    bias = getattr(head, "bias", None)
    return rows(weight, "output projection"), None if bias is None else rows((bias,), "head bias")
