"""Lockstep decoding of the pair: one model writes the answer, the other follows it token by token.

Both models keep a KV cache over their own context (the aligned chat prompt, the base template)
and advance together: each step feeds the token chosen at the previous step to both bodies, so
the final hidden rows of the same answer position come out of both at once and go through the
pair head (`pair_head.py`) with the chosen token as target, exactly as scoring uses it. No second
pass over the answer: each generated token leaves with both models' ranks, top-k, log-probabilities,
entropies and the exact divergences.

Answer token `a_j` is predicted from the hidden state of the position before it (the last context
token for `a_0`, `a_{j-1}` after), the alignment of `scorer.py`'s diagram:

    step 0: prefill context c_0..c_{C-1}    -> row at c_{C-1}  -> choose a_0, pair head at a_0
    step j: feed a_{j-1} to both bodies     -> row at a_{j-1}  -> choose a_j, pair head at a_j

Continuous batching (Orca's iteration-level scheduling): `add` queues a request, which is
prefilled (in one forward with the others that joined) at the next `step` and then merged into
the running batch (both caches are left-padded to a common length; position ids are tracked per
row); a finished or `remove`d request leaves the batch at the next step. Who chooses the token is a `TokenPolicy`: the aligned
model writes (`AlignedWrites`, the sampling of `decoder.Decoder`, so greedy output equals
`tdsdist generate`); a nudging policy can let the base write and the aligned model step in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tdsdist.engine.decoder import choose_tokens
from tdsdist.engine.pair_head import PairOutput, pair_positions
from tdsdist.engine.runner import ModelRunner

MODELS = ("aligned", "base")


@dataclass
class LockstepRequest:
    """One answer to write. `contexts`: per model (`aligned`, `base`), its context token ids."""

    id: str
    contexts: dict[str, list[int]]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)
    tokens: list[int] = field(default_factory=list)  # the answer so far

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)


@dataclass
class StepOutput:
    """What one request got from one step: a new answer position (`token` and its pair-head
    row `stats`, a one-row `PairOutput` on the CPU) unless the step ended it with an end-of-answer
    token; `finish_reason` is `stop` (end of answer), `length` (max_new_tokens reached),
    `base_vocabulary` (an aligned-only token was chosen: the base cannot follow) or None (it goes
    on)."""

    id: str
    token: int | None
    stats: PairOutput | None
    finish_reason: str | None


class TokenPolicy(Protocol):
    """Chooses each row's next token. `logits(model)` gives that model's raw logits `[B, V_local]`
    at the rows' current positions (computed on first call); rows are in `requests` order."""

    def choose(
        self, logits: Callable[[str], torch.Tensor], requests: list[LockstepRequest], shard: Any
    ) -> torch.Tensor:  # [B] global ids
        ...


class AlignedWrites:
    """The aligned model writes: each request's own sampling (temperature, top-p, its seeded
    generator), the choice of `decoder.Decoder`, row by row."""

    def choose(
        self, logits: Callable[[str], torch.Tensor], requests: list[LockstepRequest], shard: Any
    ) -> torch.Tensor:
        rows = logits("aligned")  # [B, V_local]
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0]
        out = torch.empty(len(requests), dtype=torch.long, device=rows.device)
        if greedy:  # one argmax for every greedy row
            index = torch.tensor(greedy, device=rows.device)
            out[index] = choose_tokens(rows[index], shard, 0.0, 1.0, requests[0].generator)
        for i, r in enumerate(requests):
            if r.temperature != 0:
                out[i] = choose_tokens(rows[i : i + 1], shard, r.temperature, r.top_p, r.generator)[
                    0
                ]
        return out


class _BatchCache:
    """One model's running batch: a left-padded KV cache, its attention mask and each row's next
    position id."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # [B, S] 1 = real token
        self.next_position = torch.zeros(0, dtype=torch.long)  # [B]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def select(self, keep: list[int]) -> None:
        """Keep these rows (in this order); drop columns that are padding in every row left."""
        if not keep:
            self.__init__()  # type: ignore[misc]
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.next_position = self.mask[index], self.next_position[index]
        real = self.mask.any(0).nonzero()
        first = int(real[0]) if len(real) else 0
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def append(self, cache: Any, mask: torch.Tensor) -> None:
        """Merge prefilled rows (their cache and left-padded mask `[k, L]`) below the running
        rows, both left-padded to the longer width."""
        if self.cache is None:
            self.cache, self.mask, self.next_position = cache, mask, mask.sum(-1)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old_pad, new_pad = width - self.mask.shape[1], width - mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, old_pad), _left_pad(theirs.keys, new_pad)])
            mine.values = torch.cat(
                [_left_pad(mine.values, old_pad), _left_pad(theirs.values, new_pad)]
            )
        pad = torch.nn.functional.pad
        self.mask = torch.cat([pad(self.mask, (old_pad, 0)), pad(mask, (new_pad, 0))])
        self.next_position = torch.cat([self.next_position, mask.sum(-1)])


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """`[B, heads, S, D]` -> `[B, heads, n + S, D]`, zeros in front (masked out)."""
    return t if n == 0 else torch.nn.functional.pad(t, (0, 0, n, 0))


class LockstepDecoder:
    """Decodes a changing batch of requests with both models in lockstep (module docstring).

    `step()` runs one iteration for every active request and returns what each got; requests
    join with `add` and leave when they finish or with `remove`, between steps. Every rank of a
    tensor-parallel group must make the same calls in the same order (rank 0 broadcasts them).
    """

    def __init__(
        self,
        aligned: ModelRunner,
        base: ModelRunner,
        top_k: int,
        chunk_bytes: int,
        end_ids: set[int],
        policy: TokenPolicy | None = None,
    ) -> None:
        for runner in (aligned, base):
            runner.check_top_k(top_k)
        self.runners = {"aligned": aligned, "base": base}
        self.top_k, self.chunk_bytes, self.end_ids = top_k, chunk_bytes, set(end_ids)
        self.policy: TokenPolicy = policy or AlignedWrites()
        #: Ids the base model has (fewer than the aligned one's when its vocabulary appends tokens,
        #: `pair_head.py`): a chosen id past them is recorded (base log-probability -inf) and ends
        #: the answer, since the base cannot be fed it.
        self.base_vocabulary = base.vocab_size
        self.active: list[LockstepRequest] = []  # rows of the running batch, in order
        self.pending: list[LockstepRequest] = []
        self._batches = {m: _BatchCache() for m in MODELS}

    def add(self, request: LockstepRequest) -> None:
        """Queue a request: it is prefilled and joins the batch at the next `step`."""
        if any(len(request.contexts[m]) == 0 for m in MODELS):
            raise ValueError(f"request {request.id}: a context is empty")
        self.pending.append(request)

    def remove(self, request_id: str) -> None:
        """Drop a request (finished elsewhere, or its client left) before the next step."""
        self.pending = [r for r in self.pending if r.id != request_id]
        keep = [i for i, r in enumerate(self.active) if r.id != request_id]
        if len(keep) != len(self.active):
            self._keep(keep)

    def __len__(self) -> int:
        return len(self.active) + len(self.pending)

    def _keep(self, keep: list[int]) -> None:
        self.active = [self.active[i] for i in keep]
        for batch in self._batches.values():
            batch.select(keep)

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """One token for every active and pending request (see the module docstring)."""
        if not self.active and not self.pending:
            return []
        rows: dict[str, list[torch.Tensor]] = {m: [] for m in MODELS}
        if self.active:
            for m in MODELS:
                rows[m].append(self._advance(m))  # [B_run, H]
        joined, self.pending = self.pending, []
        if joined:
            for m in MODELS:
                rows[m].append(self._prefill(m, joined))  # [k, H]
        self.active += joined
        hidden = {m: torch.cat(rows[m]) for m in MODELS}  # [B, H] in `self.active` order
        shard = self.runners["base"].shard
        logits_cache: dict[str, torch.Tensor] = {}

        def logits(model: str) -> torch.Tensor:
            if model not in logits_cache:
                logits_cache[model] = self.runners[model].logits(hidden[model])
            return logits_cache[model]

        tokens = self.policy.choose(logits, self.active, shard)  # [B]
        a, b = self.runners["aligned"], self.runners["base"]
        stats = pair_positions(
            a.head_input(hidden["aligned"]),
            b.head_input(hidden["base"]),
            a.projection(),
            b.projection(),
            tokens,
            self.top_k,
            self.chunk_bytes,
            shard,
            (logits_cache.get("aligned"), logits_cache.get("base")),  # what the policy projected
        ).to_cpu()
        return self._record(tokens.tolist(), stats.split([1] * len(self.active)))

    def _record(self, tokens: list[int], rows: list[PairOutput]) -> list[StepOutput]:
        outputs, keep = [], []
        for i, (request, token, row) in enumerate(zip(self.active, tokens, rows)):
            if token in self.end_ids:  # the answer ends before it: not part of it, not recorded
                outputs.append(StepOutput(request.id, None, None, "stop"))
                continue
            request.tokens.append(token)
            reason = "length" if len(request.tokens) >= request.max_new_tokens else None
            if token >= self.base_vocabulary:  # an appended aligned token the base cannot read
                reason = "base_vocabulary"
            outputs.append(StepOutput(request.id, token, row, reason))
            if reason is None:
                keep.append(i)
        if len(keep) != len(self.active):
            self._keep(keep)
        return outputs

    def _advance(self, model: str) -> torch.Tensor:
        """Feed each running row's last chosen token; `[B_run, H]` hidden rows (model dtype)."""
        runner, batch = self.runners[model], self._batches[model]
        device = runner.device
        ids = torch.tensor([[r.tokens[-1]] for r in self.active], device=device)  # [B, 1]
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(batch.rows, 1)], dim=-1)
        positions = batch.next_position.unsqueeze(-1)  # [B, 1]
        hidden = runner.hidden_states(
            ids, cache=batch.cache, position_ids=positions, attention_mask=batch.mask
        )[:, -1]
        batch.next_position = batch.next_position + 1
        return hidden

    def _prefill(self, model: str, requests: list[LockstepRequest]) -> torch.Tensor:
        """The joining requests' contexts through `model` in one left-padded forward (as
        `Decoder.generate` runs a batch; one request alone runs unpadded, as `generate` runs one
        prompt); their cache joins the batch. `[k, H]`: each row at its last context token."""
        from transformers import DynamicCache

        runner = self.runners[model]
        contexts = [r.contexts[model] for r in requests]
        width = max(len(c) for c in contexts)
        ids = torch.zeros(len(contexts), width, dtype=torch.long)  # [k, W] left-padded
        mask = torch.zeros(len(contexts), width, dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        ids, mask = ids.to(runner.device), mask.to(runner.device)
        cache = DynamicCache()
        hidden = runner.hidden_states(
            ids,
            cache=cache,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            attention_mask=mask,
        )[:, -1]
        self._batches[model].append(cache, mask)
        return hidden
