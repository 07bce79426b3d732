"""Attention for the scorer's right-padded batches: the causal mask alone, no padding mask.

Why: the scorer pads on the right, so every pad token sits after all real tokens of its row and a
causal mask already keeps real queries off the pads; the padding mask changes nothing a real
position sees. Passing it anyway sends `scaled_dot_product_attention` to its masked kernels:
memory-efficient attention on CUDA, all blocks computed on the CPU. Without it SDPA takes its
causal kernels: flash attention on CUDA, causal block skipping on the CPU. With a cached prefix the
queries are the last T of P + T keys, so the causal mask is aligned to the lower right
(`torch.nn.attention.bias.causal_lower_right`), which flash attention serves directly on CUDA.

Only a forward that says so (`RIGHT_PADDED=True` among its keyword arguments, which transformers
hands down to the attention function) takes the fast path, so a switched model stays correct for
anyone else, e.g. a left-padded `generate` on the same object. Anything the fast path does not cover
(sliding windows that bite, soft-capping, attention sinks, position biases, non-causal modules) goes
to transformers' own `sdpa` with the mask that transformers builds. Only models loaded with `sdpa`
switch; eager stays eager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

if TYPE_CHECKING:
    from transformers import PreTrainedModel

NAME = "tdsdist_causal"
#: The forward keyword that promises right-padded rows (no padding mask needed).
RIGHT_PADDED = "tdsdist_right_padded"

#: Keyword arguments that mean "this layer is not plain causal attention": use transformers' path.
_SPECIAL = ("softcap", "s_aux", "sinks", "position_bias")


def causal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, heads, T, d]
    key: torch.Tensor,  # [B, kv_heads, S, d], S = P + T (a cached prefix of P, then the T fed)
    value: torch.Tensor,  # [B, kv_heads, S, d]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA, lower-right aligned; returns `[B, T, heads, d]` as transformers expects."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    right_padded = kwargs.pop(RIGHT_PADDED, False)
    window = kwargs.get("sliding_window")
    special = any(kwargs.get(k) is not None for k in _SPECIAL)
    plain_causal = getattr(module, "is_causal", True) and not (window and key.shape[2] >= window)
    if not right_padded or special or not plain_causal:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len == kv_len:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    elif query.device.type == "cuda":
        bias = causal_lower_right(q_len, kv_len)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)
    else:  # the CPU kernels take no lower-right causal flag: a [T, S] boolean mask, shared by rows
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
        mask = mask.tril(kv_len - q_len)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def use_causal_attention(model: PreTrainedModel) -> bool:
    """Switch a model loaded with `sdpa` to `causal_attention`; True if it was switched.

    Forwards that pass `RIGHT_PADDED=True` must feed right-padded rows; others are unaffected.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    AttentionInterface.register(NAME, causal_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the fallback's causal mask
    model.set_attn_implementation(NAME)
    return True
