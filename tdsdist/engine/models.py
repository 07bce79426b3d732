"""Loading models and tokenizers through transformers, and checking that a pair is comparable.

TDS compares two distributions over the same vocabulary at the same token positions, so the base
and the aligned tokenizers must agree token for token; that is checked here before any weights load.
Remote code runs only when the user asks (`trust_remote_code`).
"""

from __future__ import annotations

import hashlib
import json

import torch

from tdsdist.errors import TdsError

DTYPE = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # tdsdist checks lengths against the model's window itself, per example, with a clear message;
    # transformers' "longer than the maximum sequence length" warning would only be noise.
    hf_logging.set_verbosity_error()

    try:
        return AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the tokenizer of {name!r}: {_first_line(e)}") from None


def load_model_config(name: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the configuration of {name!r}: {_first_line(e)}") from None


def load_model(
    name: str,
    dtype: str,
    device: torch.device,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """The causal LM in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, dtype=DTYPE[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise TdsError(f"cannot load the model {name!r}: {_first_line(e)}") from None
    return model.to(device).eval()


def model_window(config, tokenizer) -> int:
    """Longest sequence the model takes: its position limit, or the tokenizer's if smaller."""
    limits = [
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


def vocabulary(tokenizer) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def tokenizer_hash(tokenizer) -> str:
    """Fingerprint of what maps text to ids: vocabulary, special tokens and chat template."""
    payload = {
        "vocab": sorted(vocabulary(tokenizer).items(), key=lambda kv: kv[1]),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_same_vocabulary(aligned_tok, base_tok, aligned: str, base: str) -> None:
    """Refuse a pair whose tokenizers map tokens to different ids: ranks would be meaningless."""
    a, b = vocabulary(aligned_tok), vocabulary(base_tok)
    if a == b:
        return
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])
    detail = []
    if only_a:
        detail.append(f"{len(only_a)} token(s) only in the aligned one (e.g. {only_a[0]!r})")
    if only_b:
        detail.append(f"{len(only_b)} token(s) only in the base one (e.g. {only_b[0]!r})")
    if moved:
        detail.append(f"{len(moved)} token(s) with different ids (e.g. {moved[0]!r})")
    raise TdsError(
        f"the tokenizers of {aligned!r} and {base!r} differ: {'; '.join(detail)};"
        " TDS needs one shared vocabulary"
    )


def output_projection(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight `[V, H]` and bias, whether tied to the embeddings or not."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TdsError(f"{type(model).__name__} has no output embedding layer to score with")
    return head.weight, getattr(head, "bias", None)


def logit_softcap(model: torch.nn.Module) -> float | None:
    """Gemma-2 style final soft-capping (`cap * tanh(logits / cap)`), which changes ranks' scale."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
