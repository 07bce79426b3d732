"""Batched decoding with a KV cache: the aligned model's answers (`tdsdist generate`).

Only the answers' token ids come out: their statistics are what the pair head computes when it
scores the answers afterwards (both models on the same rows, exact divergences), so decoding
does not compute them a first time. The model is behind the same `ModelRunner` seam as the
scorer; under tensor parallelism each rank holds a vocabulary slice: greedy choice is a global argmax (O(tp) floats per row), sampling
gathers the step's logits (one row per sequence, O(V)), and every rank of a group makes the same
choice from the same numbers and seed.

Batches are left-padded (position ids from the attention mask), so every sequence's next token
is read from the last column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tdsdist.engine.head import VocabShard, gather_vocabulary, global_argmax
from tdsdist.engine.runner import ModelRunner

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen, and when an answer ends."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass
class Generated:
    ids: list[int]
    """The answer's token ids, without the token that ended it."""


def end_of_answer_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Tokens that end an answer: the generation config's EOS ids and the tokenizer's EOS. They
    are not part of the answer (nor recorded): the answer is the text before them."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set() if eos is None else set(eos if isinstance(eos, (list, tuple)) else [int(eos)])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def choose_tokens(
    logits: torch.Tensor,  # [B, V_local] raw logits of this rank's vocabulary slice
    shard: VocabShard,
    temperature: float,
    top_p: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """`[B]` global ids: greedy (lowest id among equal maxima) or temperature / top-p sampling
    from the whole vocabulary. Shared by `Decoder` and the lockstep decoder (`lockstep.py`), so
    that both pick the same token from the same logits and generator state."""
    if temperature == 0:
        return global_argmax(logits, shard)
    probs = torch.softmax(gather_vocabulary(logits, shard) / temperature, -1)
    if top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest nucleus
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


class Decoder:
    """Decodes batches of contexts with one model."""

    def __init__(
        self, runner: ModelRunner, tokenizer: PreTrainedTokenizerBase, sampling: Sampling
    ) -> None:
        self.runner, self.tokenizer, self.sampling = runner, tokenizer, sampling
        self.eos = end_of_answer_ids(runner.model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _choose(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """`[B, V_local] -> [B]` (see `choose_tokens`)."""
        s = self.sampling
        return choose_tokens(logits, self.runner.shard, s.temperature, s.top_p, gen)

    @torch.inference_mode()
    def generate(self, contexts: list[list[int]], seed: int) -> list[Generated]:
        from transformers import DynamicCache

        runner, s = self.runner, self.sampling
        gen = torch.Generator().manual_seed(seed)
        b, width = len(contexts), max(len(c) for c in contexts)
        ids = torch.full((b, width), self.pad, dtype=torch.long)  # [B, W]
        mask = torch.zeros(b, width, dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every sequence ends at the same column
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out_ids: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        step_ids = ids
        for _ in range(s.max_new_tokens):
            hidden = runner.hidden_states(
                step_ids, cache=cache, position_ids=positions, attention_mask=mask
            )[:, -1]  # [B, H]
            logits = runner.logits(hidden)  # [B, V_local] raw: before temperature / top-p
            token = self._choose(logits, gen)  # [B] global ids
            for i, t in enumerate(token.tolist()):
                if done[i]:
                    continue
                if t in self.eos:
                    done[i] = True
                    continue
                out_ids[i].append(t)
                if s.stop and self._hit_stop(out_ids[i]):
                    out_ids[i].pop()
                    done[i] = True
            if all(done):
                break
            step_ids = token.unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=-1)
            positions = positions[:, -1:] + 1
        return [Generated(answer) for answer in out_ids]

    def _hit_stop(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids)
        return any(stop in text for stop in self.sampling.stop)
