"""Loading models through transformers, and what the engine reads off them.

Remote code runs only when the user asks (`trust_remote_code`). The device is resolved here too:
both jobs take `--device auto|cpu|cuda|cuda:N`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from tdsdist.config import DTYPES
from tdsdist.errors import TdsError, first_line
from tdsdist.model_paths import check_model_source

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

#: The torch dtype of each `--dtype` name (`config.DTYPES`).
DTYPE = {name: getattr(torch, name) for name in DTYPES}


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when available. Under torchrun each process takes its `LOCAL_RANK`'s GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise TdsError(f"--device {name}: CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def load_model_config(
    name: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedConfig:
    from transformers import AutoConfig

    check_model_source(name)  # a file, a folder without weights, no hub: one line, before loading
    try:
        config: PreTrainedConfig = AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the configuration of {name!r}: {first_line(e)}") from None
    return config


def load_model(
    name: str,
    dtype: str,
    device: torch.device,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The causal LM in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModelForCausalLM

    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, dtype=DTYPE[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the model {name!r}: {first_line(e)}") from None
    # transformers wraps `to` in `functools.wraps(nn.Module.to)`, whose stub wants `self` as
    # argument 1, and leaves `eval` unannotated: both return the model itself.
    model = model.to(device).eval()  # type: ignore[arg-type]
    return model


def model_window(config: PreTrainedConfig, tokenizer: Any) -> int:
    """Longest sequence the model takes: its position limit, or the tokenizer's if smaller."""
    limits: list[int] = [
        getattr(config, key)
        for key in ("max_position_embeddings", "n_positions", "seq_length")
        if isinstance(getattr(config, key, None), int)
    ]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**7:
        limits.append(tokenizer_limit)
    if not limits:
        raise TdsError("cannot tell the model's context window from its configuration")
    return min(limits)


def output_projection(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight `[V, H]` and bias, whether tied to the embeddings or not."""
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]  # unannotated upstream
    if head is None or not hasattr(head, "weight"):
        raise TdsError(f"{type(model).__name__} has no output embedding layer to score with")
    return head.weight, getattr(head, "bias", None)


def logit_softcap(model: PreTrainedModel) -> float | None:
    """Gemma-2 style final soft-capping (`cap * tanh(logits / cap)`), which changes ranks' scale."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return float(cap) if cap else None
