"""`tdsdist generate`: the aligned model writes its answers and records its own distributions.

The published pipeline generates answers in one project and then runs the aligned model again
over them to score them. Here the statistics of every generated position (top-k, the chosen
token's log-probability and rank, entropy) are computed from the raw logits of the decoding step
itself, before temperature or top-p, with the same scoring head as `score`; a later `score`
against the recorded store runs only the base pass.

Batches are left-padded (position ids from the attention mask) and decoded with a KV cache.
Work is done in units of examples; each finished unit is saved under `OUT.parts/` (JSON and
`.npz`, written atomically), so an interrupted run resumes; the answers file and the store are
assembled at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tdsdist import __version__
from tdsdist.engine.head import logit_statistics
from tdsdist.engine.models import (
    load_model,
    load_tokenizer,
    logit_softcap,
    output_projection,
    tokenizer_hash,
)
from tdsdist.errors import TdsError
from tdsdist.inputs.data import Fields, file_sha256, load_examples
from tdsdist.inputs.plan import tokenize_context
from tdsdist.inputs.templates import aligned_context_fn, template_fingerprint

STATS = ("top_ids", "top_logprobs", "logprob", "rank", "entropy")


@dataclass
class GenerateConfig:
    aligned: str
    """The aligned model: hub id or local folder."""
    data: str
    """Prompts: a just-eval JSON/JSONL file, or a JSON list of instruction strings."""
    out: str
    """Answers file to write (just-eval JSON list, readable by `score`)."""
    store: str | None = None
    """Also record the aligned model's statistics into this store (then `score` runs base only)."""
    aligned_template: str = "chat"
    """`chat` (tokenizer template on the instruction) or `input` (the data's prompt verbatim)."""
    max_new_tokens: int = 512
    """Longest answer, in tokens."""
    temperature: float = 0.0
    """0: greedy (the default); otherwise sample at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Sampling seed (per unit, so a resumed run samples what an uninterrupted one would)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: the answer ends before the token that completes one."""
    batch_size: int = 16
    """Sequences decoded together."""
    top_k: int = 20
    """Candidates recorded per position (with --store)."""
    limit: int | None = None
    unit_size: int = 32
    dtype: str = "float32"
    device: str = "auto"
    overwrite: bool = False
    trust_remote_code: bool = False
    aligned_revision: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "top_k", "unit_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if self.aligned_template not in ("chat", "input"):
            raise ValueError("aligned_template must be 'chat' or 'input'")


@dataclass
class Generated:
    ids: list[int]
    stats: dict[str, np.ndarray]  # per generated position; shapes as in the store


class Generator:
    """Batched decoding with a KV cache; statistics from the raw logits of each step."""

    def __init__(self, model, tokenizer, cfg: GenerateConfig, device: torch.device) -> None:
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        weight, bias = output_projection(model)
        vocab = len(tokenizer)
        self.weight, self.bias = weight[:vocab], None if bias is None else bias[:vocab]
        self.softcap = logit_softcap(model)
        self.eos = {t for t in _as_list(getattr(model.generation_config, "eos_token_id", None))}
        if tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B, V] float32
        logits = F.linear(hidden, self.weight, self.bias).float()
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

    def _choose(self, logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Greedy (lowest id among equal maxima) or temperature / top-p sampling."""
        if self.cfg.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / self.cfg.temperature, -1)
        if self.cfg.top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.cfg.top_p  # keep the smallest nucleus
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)

    @torch.inference_mode()
    def generate(self, contexts: list[list[int]], seed: int) -> list[Generated]:
        from transformers import DynamicCache

        gen = torch.Generator().manual_seed(seed)
        b, width = len(contexts), max(len(c) for c in contexts)
        ids = torch.full((b, width), self.pad, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding: every sequence ends at the same column
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out_ids: list[list[int]] = [[] for _ in range(b)]
        rows: list[list[dict[str, Any]]] = [[] for _ in range(b)]
        done = [False] * b
        step_ids = ids
        for _ in range(self.cfg.max_new_tokens):
            hidden = self.model.base_model(
                input_ids=step_ids, attention_mask=mask, position_ids=positions,
                use_cache=True, **{self.cache_kwarg: cache},
            ).last_hidden_state[:, -1]  # fmt: skip
            logits = self._logits(hidden)  # [B, V] raw: before temperature / top-p
            token = self._choose(logits, gen)  # [B]
            stats = logit_statistics(logits, token, self.cfg.top_k)
            cpu = {k: getattr(stats, k).cpu() for k in STATS}
            for i in range(b):
                if done[i]:
                    continue
                t = int(token[i])
                if t in self.eos:
                    done[i] = True
                    continue
                out_ids[i].append(t)
                rows[i].append({k: cpu[k][i] for k in STATS})
                if self.cfg.stop and self._hit_stop(out_ids[i]):
                    out_ids[i].pop()
                    rows[i].pop()
                    done[i] = True
            if all(done):
                break
            step_ids = token.unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=-1)
            positions = positions[:, -1:] + 1
        return [Generated(out_ids[i], _stack(rows[i], self.cfg.top_k)) for i in range(b)]

    def _hit_stop(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids)
        return any(s in text for s in self.cfg.stop)


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


def _stack(rows: list[dict[str, Any]], k: int) -> dict[str, np.ndarray]:
    if not rows:
        return {
            "top_ids": np.zeros((0, k), np.int32), "top_logprobs": np.zeros((0, k), np.float32),
            "logprob": np.zeros(0, np.float32), "rank": np.zeros(0, np.int32), "entropy": np.zeros(0, np.float32),
        }  # fmt: skip
    return {
        "top_ids": torch.stack([r["top_ids"] for r in rows]).numpy().astype(np.int32),
        "top_logprobs": torch.stack([r["top_logprobs"] for r in rows]).numpy().astype(np.float32),
        "logprob": torch.stack([r["logprob"] for r in rows]).numpy().astype(np.float32),
        "rank": torch.stack([r["rank"] for r in rows]).numpy().astype(np.int32),
        "entropy": torch.stack([r["entropy"] for r in rows]).numpy().astype(np.float32),
    }


def _fingerprint(cfg: GenerateConfig, tokenizer) -> dict[str, Any]:
    keys = ("aligned", "aligned_revision", "max_new_tokens", "temperature", "top_p", "seed", "stop", "top_k", "limit", "unit_size", "dtype")  # fmt: skip
    fp = {k: getattr(cfg, k) for k in keys}
    fp.update(
        aligned_template=template_fingerprint(cfg.aligned_template),
        data_sha256=file_sha256(Path(cfg.data)),
        tokenizer_sha256=tokenizer_hash(tokenizer),
        tdsdist_version=__version__,
    )
    return fp


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_generate(cfg: GenerateConfig, log=print) -> dict[str, Any]:
    """Generate (resuming finished units), then write the answers file and the store."""
    from tdsdist.jobs.score import resolve_device
    from tdsdist.parallel.dist import destroy, init_distributed

    examples = load_examples(cfg.data, Fields(), cfg.limit, require_answer=False)
    tokenizer = load_tokenizer(cfg.aligned, cfg.aligned_revision, cfg.trust_remote_code)
    context_fn = aligned_context_fn(cfg.aligned_template, tokenizer)
    contexts = [
        tokenize_context(tokenizer, context_fn(ex), cfg.aligned_template == "input")
        for ex in examples
    ]
    out, parts = Path(cfg.out), Path(cfg.out + ".parts")
    fingerprint = _fingerprint(cfg, tokenizer)
    device = resolve_device(cfg.device)
    d = init_distributed(1, 600, device)
    try:
        if d.is_main:
            _prepare_parts(parts, out, cfg, fingerprint)
        if d.distributed:
            torch.distributed.barrier()
        units = [
            range(i, min(i + cfg.unit_size, len(examples)))
            for i in range(0, len(examples), cfg.unit_size)
        ]
        mine = [
            u
            for n, u in enumerate(units)
            if n % d.dims.world == d.rank and not (parts / f"unit-{n:06d}.json").exists()
        ]
        load_seconds = 0.0
        start = time.perf_counter()
        if mine:
            model = load_model(
                cfg.aligned, cfg.dtype, device, cfg.aligned_revision, cfg.trust_remote_code
            )
            generator = Generator(model, tokenizer, cfg, device)
            load_seconds = time.perf_counter() - start
            start = time.perf_counter()
            bar = tqdm(
                total=sum(len(u) for u in mine),
                unit="ex",
                desc="generating",
                disable=None if d.is_main else True,
            )
            for unit in mine:
                n = unit.start // cfg.unit_size
                _generate_unit(generator, tokenizer, examples, contexts, unit, n, parts, cfg)
                bar.update(len(unit))
            bar.close()
        if d.distributed:
            torch.distributed.barrier()
        if d.is_main:
            _assemble(examples, contexts, units, parts, out, cfg, fingerprint, tokenizer, log)
        # generate_seconds: decoding, saving and assembling (answers file, store); loading apart.
        elapsed = time.perf_counter() - start
        return {
            "load_seconds": load_seconds,
            "generate_seconds": elapsed,
            "examples": len(examples),
        }
    finally:
        destroy(d)


def _prepare_parts(
    parts: Path, out: Path, cfg: GenerateConfig, fingerprint: dict[str, Any]
) -> None:
    marker = parts / "fingerprint.json"
    if cfg.overwrite:
        shutil.rmtree(parts, ignore_errors=True)
    if marker.exists():
        stored = json.loads(marker.read_text())
        diffs = [
            f"{k}: {stored.get(k)!r} before, {v!r} now"
            for k, v in fingerprint.items()
            if stored.get(k) != v
        ]
        if diffs:
            raise TdsError(
                f"{parts}: an unfinished run with another configuration ({'; '.join(diffs)}); use --overwrite"
            )
        return
    if out.exists() and not cfg.overwrite:
        raise TdsError(f"{out}: already exists (use --overwrite to generate again)")
    parts.mkdir(parents=True, exist_ok=True)
    _write_atomic(marker, json.dumps(fingerprint).encode())


def _generate_unit(generator, tokenizer, examples, contexts, unit, n, parts, cfg) -> None:
    order = sorted(unit, key=lambda i: -len(contexts[i]))  # similar lengths: less padding
    results: dict[int, Generated] = {}
    for b in range(0, len(order), cfg.batch_size):
        batch = order[b : b + cfg.batch_size]
        # One seed per unit and batch position: a resumed run samples what a fresh one would.
        for i, g in zip(
            batch,
            generator.generate([contexts[i] for i in batch], cfg.seed * 1_000_003 + n * 1009 + b),
        ):
            results[i] = g
    records = [
        {"index": i, "ids": results[i].ids, "answer": tokenizer.decode(results[i].ids)}
        for i in unit
    ]
    arrays = {f"{k}/{i}": results[i].stats[k] for i in unit for k in STATS}
    tmp = parts / f"unit-{n:06d}.npz.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, parts / f"unit-{n:06d}.npz")
    _write_atomic(
        parts / f"unit-{n:06d}.json", json.dumps(records).encode()
    )  # written last: the commit


def _assemble(examples, contexts, units, parts, out, cfg, fingerprint, tokenizer, log) -> None:
    answers: dict[int, dict[str, Any]] = {}
    stats: dict[int, dict[str, np.ndarray]] = {}
    for n, _ in enumerate(units):
        for rec in json.loads((parts / f"unit-{n:06d}.json").read_text()):
            answers[rec["index"]] = rec
        with np.load(parts / f"unit-{n:06d}.npz", allow_pickle=False) as z:
            for key in z.files:
                name, i = key.split("/")
                stats.setdefault(int(i), {})[name] = z[key]
    settings = {
        k: getattr(cfg, k)
        for k in (
            "aligned",
            "aligned_template",
            "max_new_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
        )
    }
    records = [
        {
            "id": ex.id,
            "pure_input": ex.instruction,
            "input": tokenizer.decode(contexts[ex.index]),
            "output": [answers[ex.index]["answer"]],
            "generator": settings,
        }
        for ex in examples
    ]
    _write_atomic(out, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
    log(f"tdsdist: wrote {len(records)} answers to {out}")
    empty = [ex.id for ex in examples if not answers[ex.index]["ids"]]
    if cfg.store and len(empty) < len(examples):
        if empty:
            log(
                f"tdsdist: {len(empty)} empty answers (e.g. id {empty[0]!r}) are not recorded in the"
                " store; score the answers with --skip-empty-answers"
            )
        _record_store(examples, answers, stats, out, cfg, fingerprint, tokenizer, empty)
        log(f"tdsdist: recorded the aligned model's distributions in {cfg.store}")
    shutil.rmtree(parts)
    if cfg.store and len(empty) == len(examples):
        raise TdsError(f"{out}: every generated answer is empty, so no store was recorded")


def _record_store(examples, answers, stats, out, cfg, fingerprint, tokenizer, empty) -> None:
    """A store whose aligned side is filled and whose units wait for the base pass (`score`)."""
    from tdsdist.store import create

    kept = [ex for ex in examples if answers[ex.index]["ids"]]
    lengths = np.array([len(answers[ex.index]["ids"]) for ex in kept], dtype=np.int32)
    score_fingerprint = {
        "aligned": cfg.aligned, "aligned_revision": cfg.aligned_revision, "base": None, "base_revision": None,
        "aligned_template": fingerprint["aligned_template"], "base_template": None, "top_k": cfg.top_k,
        "dtype": cfg.dtype, "max_output_tokens": None, "limit": None, "unit_size": cfg.unit_size,
        "truncate_context": False, "fields": dataclasses.asdict(Fields()), "data_sha256": file_sha256(out),
        "tokenizer_sha256": fingerprint["tokenizer_sha256"], "tdsdist_version": __version__,
    }  # fmt: skip
    if empty:  # as `score --skip-empty-answers` will list them, so the fingerprints agree
        score_fingerprint["skipped_empty_answers"] = empty
    store = create(
        Path(cfg.store),
        ids=[ex.id for ex in kept],
        lengths=lengths,
        token_ids=np.concatenate([np.asarray(answers[ex.index]["ids"], np.int32) for ex in kept]),
        flags={
            "answer_truncated": np.array(
                [len(answers[ex.index]["ids"]) >= cfg.max_new_tokens for ex in kept]
            )
        },
        unit_size=cfg.unit_size,
        top_k=cfg.top_k,
        meta={
            "fingerprint": score_fingerprint,
            "recorded_aligned": {
                "generation": fingerprint,
                "answers_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            },
            "vocab_size": len(tokenizer),
            "config": {"aligned": cfg.aligned, "generate": dataclasses.asdict(cfg)},
        },
        tokenizer=tokenizer,
        overwrite=cfg.overwrite,
    )
    for unit in store.units():
        arrays = {
            f"aligned/{k}": np.concatenate([stats[kept[e].index][k] for e in unit.examples])
            for k in STATS
        }
        store.write_rows(unit, arrays)  # not committed: the base pass commits each unit
