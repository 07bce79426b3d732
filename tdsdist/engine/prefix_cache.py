"""The shared prefix's keys and values: computed once per model replica, used by every batch.

Why a cache layer of our own: transformers' `DynamicLayer` concatenates each batch's keys onto
what it holds and keeps the result until the forward ends. With the prefix held as one broadcast
copy, that concatenation takes CUDA's strided `cat` path, which was 29% of a Llama-2-7B batch's
GPU time on an H200 under a 1.2K-token prefix (`docs/gpu/profile_prefix_before.txt and profile_prefix_after.txt`), and it keeps every
layer's `[B, P + T]` keys alive at once. `PrefixLayer` instead writes the prefix and the batch's
own keys into one fresh `[B, P + T]` buffer with plain copies, hands it to attention and keeps
nothing: one layer's buffer is alive at a time, and one cache object serves every batch as is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _with_prefix(prefix: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`[1, heads, P, d]` and `[B, heads, T, d]` -> `[B, heads, P + T, d]`, new memory."""
    batch, heads, t, d = new.shape
    p = prefix.shape[2]
    out = new.new_empty(batch, heads, p + t, d)
    out[:, :, :p] = prefix  # broadcast over the batch
    out[:, :, p:] = new
    return out


# transformers leaves `CacheLayerMixin.__init_subclass__` and `__init__` unannotated.
class PrefixLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's prefix keys and values, shared by all sequences and never grown.

    `get_seq_length` (the P tokens already seen) and the mask sizes come from `DynamicLayer`,
    which reads them off the stored `[1, heads, P, d]` keys.
    """

    keys: torch.Tensor  # never None here (the base class starts empty)
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in transformers
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _with_prefix(self.keys, key_states), _with_prefix(self.values, value_states)


@torch.inference_mode()
def compute_prefix_cache(model: PreTrainedModel, prefix: list[int], cache_kwarg: str) -> Cache:
    """Run the prefix once (batch of one) and wrap its keys and values for reuse.

    `cache_kwarg`: the name the model's forward (and its output) gives the cache.
    """
    device = next(model.parameters()).device
    out = model.base_model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    computed = getattr(out, cache_kwarg)
    return Cache(layers=[PrefixLayer(layer.keys, layer.values) for layer in computed.layers])


def cache_bytes(cache: Cache) -> int:
    """Memory held by the stored prefix keys and values (one copy, whatever the batch)."""
    layers = cast(list[PrefixLayer], cache.layers)  # built by `compute_prefix_cache`
    return sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
