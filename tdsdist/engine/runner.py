"""The one seam where a model runs: its body, the output projection of chosen rows, a prefix cache.

Both jobs call the same object: `Scorer` (teacher-forced answers, `score`) and `Decoder`
(`generate`) never touch the model directly (lm-evaluation-harness does the same with
`HFLM._model_call` and `_model_generate`). Tensor parallelism plugs in here and nowhere else:
`tdsdist.parallel.loading` builds a runner over a DeepSpeed AutoTP body whose `hidden_states` are
the full final hidden states on every rank, with this rank's rows of the output projection and
the `VocabShard` that the scoring head reduces over.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from tdsdist.engine.attention import RIGHT_PADDED, use_causal_attention
from tdsdist.engine.head import Projection, VocabShard
from tdsdist.engine.models import logit_softcap, output_projection
from tdsdist.engine.prefix_cache import cache_bytes, compute_prefix_cache
from tdsdist.errors import TdsError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ModelRunner:
    """One model (whole, or this rank's part of it) and its projection onto the vocabulary."""

    def __init__(
        self,
        model: PreTrainedModel,
        vocab_size: int,
        device: torch.device,
        shard: VocabShard = VocabShard(),
        projection: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        head_dtype: str = "model",
        body_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        """`projection`: this rank's (weight, bias) rows when the vocabulary is split across
        ranks (with its `shard`); by default the model's own, padding rows past the tokenizer's
        `vocab_size` trimmed (they are no tokens at all). `head_dtype="float32"`: the projection
        runs in float32 from the model's hidden states (a float32 copy of this rank's rows).
        `body_context`: entered around every forward of the body (the prefix's too): the base
        side of an adapter pair runs the shared module with the adapter off (`adapters.py`)."""
        self.model = model
        self.body_context = body_context
        self.vocab_size = vocab_size
        self.device = device
        self.shard = shard
        if projection is None:
            weight, bias = output_projection(model)
            projection = (weight[:vocab_size], None if bias is None else bias[:vocab_size])
        weight, bias = projection  # [V_local, H], [V_local]
        if head_dtype == "float32" and weight.dtype in (torch.bfloat16, torch.float16):
            weight = weight.detach().float()
            bias = None if bias is None else bias.detach().float()
        self.weight, self.bias = weight, bias
        self.softcap = logit_softcap(model)
        # sdpa models: causal kernels for right-padded forwards (see `attention.py`)
        self._right_padded_kwargs = {RIGHT_PADDED: True} if use_causal_attention(model) else {}
        # transformers >= 5.24 calls the argument `cache` (`past_key_values` is deprecated).
        forward_params = inspect.signature(model.base_model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self.prefix: list[int] = []
        self._prefix_cache: Any = None

    def smallest_slice(self) -> int:
        """Rows of the smallest vocabulary slice of any rank (all of it on one process)."""
        return self.vocab_size // self.shard.world

    def check_top_k(self, top_k: int) -> None:
        """Every rank's local top-k must have the same shape for the all-gather."""
        if top_k > self.smallest_slice():
            where = "vocabulary" if self.shard.world == 1 else "smallest vocabulary slice"
            raise TdsError(f"--top-k {top_k} exceeds the {where} ({self.smallest_slice()} rows)")

    def hidden_states(
        self,
        input_ids: torch.Tensor,  # [B, T]
        *,
        cache: Any = None,  # keys and values of earlier positions, per layer
        position_ids: torch.Tensor | None = None,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, S] 1 = real token (left padding)
        right_padded: bool = False,
    ) -> torch.Tensor:
        """Final hidden states `[B, T, H]` (after the final norm): the model minus its LM head.

        `right_padded=True` promises that every pad follows its row's real tokens, so the
        causal mask already hides it and no padding mask is needed (`attention.py`).
        """
        kwargs: dict[str, Any] = {"use_cache": cache is not None}
        if right_padded:
            kwargs.update(self._right_padded_kwargs)
        if cache is not None:
            kwargs[self.cache_kwarg] = cache
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        with self.body_context():
            hidden: torch.Tensor = self.model.base_model(
                input_ids=input_ids, **kwargs
            ).last_hidden_state
            return hidden

    def logits(
        self,
        hidden: torch.Tensor,  # [N, H] model dtype
        out: torch.Tensor | None = None,  # [N, V_local] float32 buffer to reuse
    ) -> torch.Tensor:
        """Float32 logits `[N, V_local]` of this rank's vocabulary rows, soft-capped if the
        model caps them."""
        return self.projection().logits(self.head_input(hidden), out)

    def projection(self) -> Projection:
        """Everything the scoring head needs of this model: this rank's projection rows (in the
        head's dtype), the logit cap and the vocabulary slice."""
        return Projection(self.weight, self.bias, self.softcap, self.shard)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden rows in the projection's dtype (float32 under `head_dtype="float32"`)."""
        return hidden.to(self.weight.dtype)

    def set_prefix(self, prefix: list[int]) -> None:
        """Tokens that open every context of the run: computed once, reused by every batch."""
        if list(prefix) != self.prefix:
            self.prefix = list(prefix)
            self._prefix_cache = None

    def prefix_cache(self) -> Any:
        """The prefix's keys and values (computed on first use), or None without a prefix.

        One object for every batch: its layers broadcast the stored copy into each batch's keys
        (see `prefix_cache.py`).
        """
        if self.prefix and self._prefix_cache is None:
            with self.body_context():
                self._prefix_cache = compute_prefix_cache(self.model, self.prefix, self.cache_kwarg)
        return self._prefix_cache if self.prefix else None

    def prefix_cache_bytes(self) -> int:
        """Memory of the stored prefix keys and values (0 without a prefix)."""
        cache = self.prefix_cache()
        return 0 if cache is None else cache_bytes(cache)
