"""Correctness on the GPU: the engine on CUDA against the float64 per-token reference.

CI has no GPU, so this is the check that the scoring path (body forward, chunked head, exact
ranks, the prefix cache) gives on a CUDA device what it gives on the CPU tests. Cases:
- `tiny_fp32`: tiny Llama (GQA, vocabulary padded past the tokenizer), eager attention, float32,
  small token budget and chunk (several padded batches, several chunks), with support ids;
- `tiny_fp32_prefix`: the same model, contexts sharing a prefix, prefix cache on;
- `tiny_fp32_sdpa_prefix`: the same with sdpa, which the engine switches to its causal-only
  attention (lower-right causal kernels under the cached prefix);
- `big_vocab_fp32`: a 128,256-entry vocabulary (Llama-3's size), default 64 MiB chunks;
- `tiny_bf16_sdpa`: the tiny model in bfloat16 with sdpa, how close bf16 gets (reported, not
  required: bf16 logits have ~3 significant digits);
- `attention_vs_masked_sdpa`: the engine's causal-only attention (bf16 on CUDA: flash, lower-right
  under a 1,203-token prefix) against sdpa with an explicit causal + padding mask, real rows of a
  right-padded batch at Llama-2-7B's head shape; must agree within 2e-2 (a misaligned mask
  differs by O(1)).
The reference (`tdsdist.engine.reference.per_token_reference`) runs a float64 copy of each model on the
CPU, one fresh forward per answer token. Exits 1 if a float32 case fails its tolerance.

    python -m tools.gpu.correctness --out docs/gpu/gpu_correctness.json
    python -m tools.gpu.correctness --device cpu          # the same checks on the CPU
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tdsdist_testkit import (
    default_corpus,
    make_big_vocab_model,
    make_tiny_llama,
    train_tiny_tokenizer,
)

from tdsdist.engine.reference import per_token_reference
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tools.common import agreement, arg_parser, print_report

K = 10


def sequences(tokenizer, n: int, seed: int, prefix: list[int] | None = None) -> list[ContextAnswer]:
    """Fresh contexts and answers of varied lengths cut from the default corpus."""
    rng = random.Random(seed)
    corpus = default_corpus()
    out = []
    for _ in range(n):
        ctx = tokenizer(" ".join(rng.sample(corpus, 2)))["input_ids"][: rng.randint(1, 30)]
        ans = tokenizer(" ".join(rng.sample(corpus, 2)), add_special_tokens=False)["input_ids"]
        out.append(ContextAnswer((prefix or []) + ctx, ans[: rng.randint(1, 40)]))
    return out


def random_sequences(vocab: int, n: int, seed: int) -> list[ContextAnswer]:
    gen = torch.Generator().manual_seed(seed)
    return [
        ContextAnswer(
            torch.randint(0, vocab, (int(c),), generator=gen).tolist(),
            torch.randint(0, vocab, (int(a),), generator=gen).tolist(),
        )
        for c, a in torch.randint(1, 24, (n, 2), generator=gen)
    ]


def compare(got: dict, ref: dict) -> dict:
    """Agreement figures between the engine's output and the reference (concatenated)."""
    out = {
        "positions": int(len(ref["rank"])),
        **agreement(got, ref),
        # A random target among 128K logits often has a neighbour within float32's resolution.
        "ranks_identical_where_target_gap_over_1e-4": float(
            (got["rank"] == ref["rank"])[ref["target_gap"] > 1e-4].mean()
        ),
        "max_rank_diff": int(np.abs(got["rank"].astype(np.int64) - ref["rank"]).max()),
    }
    if "support" in ref:
        out["max_abs_support_diff"] = float(np.abs(got["support_logprobs"] - ref["support"]).max())
    return out


def run_case(model, vocab, seqs, device, dtype, chunk_bytes, budget, prefix=None, support=False):
    reference_model = copy.deepcopy(model).to(torch.float64).cpu()
    sup = None
    if support:
        rng = np.random.default_rng(0)
        sup = [rng.integers(0, vocab, (len(s.answer), K)) for s in seqs]
    scorer = Scorer.for_model(
        model.to(device=device, dtype=dtype), vocab, K, chunk_bytes, budget, device
    )
    if prefix:
        scorer.runner.set_prefix(prefix)
    got = scorer.score(seqs, sup)
    refs = [
        per_token_reference(
            reference_model, s.context, s.answer, K, vocab, None if sup is None else sup[i]
        )
        for i, s in enumerate(seqs)
    ]
    ref = {k: np.concatenate([r[k] for r in refs]) for k in refs[0]}
    return compare(got, ref)


def attention_case(device: torch.device, dtype: torch.dtype) -> tuple[dict, float]:
    """`causal_attention` (flash, lower-right under a prefix, on CUDA in bf16) against
    transformers' sdpa with an explicit causal + padding mask, on the real rows of a
    right-padded batch at Llama-2-7B's head shape; a misaligned mask would differ by O(1)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tdsdist.engine.attention import RIGHT_PADDED, causal_attention

    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for prefix_len in (0, 1203):
        batch, heads, t, d = 4, 32, 360, 128
        lengths = [360, 301, 77, 1]
        q, k, v = (
            torch.randn(batch, heads, n, d, generator=gen, device=device, dtype=dtype)
            for n in (t, prefix_len + t, prefix_len + t)
        )
        keys = torch.arange(prefix_len + t, device=device)
        causal = keys[None, :] <= (prefix_len + torch.arange(t, device=device))[:, None]
        real = torch.stack([keys < prefix_len + n for n in lengths])
        mask = (causal[None] & real[:, None])[:, None]
        module = torch.nn.Module()
        module.num_key_value_groups = 1
        got, _ = causal_attention(module, q, k, v, None, scaling=d**-0.5, **{RIGHT_PADDED: True})
        want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d**-0.5, is_causal=False)
        diff = max(float((got[b, :n] - want[b, :n]).abs().max()) for b, n in enumerate(lengths))
        out[f"max_abs_diff_prefix_{prefix_len}"] = diff
    # The control: top-left alignment (what `is_causal=True` means when queries are fewer than
    # keys) on the last case; a check that could not tell the two apart would be worthless.
    wrong = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(
        1, 2
    )
    control = max(float((wrong[b, :n] - want[b, :n]).abs().max()) for b, n in enumerate(lengths))
    return out, control


def passes(result: dict, tol: float) -> bool:
    ids_ok = (
        result["top_ids_identical"] == 1.0 or (result["closest_gap_where_order_differs"] or 0) < tol
    )
    diffs = [v for k, v in result.items() if k.startswith("max_abs")]
    ranks_ok = result["ranks_identical_where_target_gap_over_1e-4"] == 1.0
    return ids_ok and ranks_ok and max(diffs) < tol


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only-attention", action="store_true", help="just the attention case")
    args = parser.parse_args()
    device = torch.device(args.device)
    attention, control = attention_case(
        device, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    print(json.dumps({"attention": attention, "misaligned_control": control}))
    if args.only_attention:
        sys.exit(0 if max(attention.values()) < 2e-2 else 1)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    tok = train_tiny_tokenizer(default_corpus(), 301)
    vocab = len(tok)

    def tiny(attn: str = "eager"):
        model = make_tiny_llama(
            tok,
            seed=11,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=128,
            vocab_size=320,
        )
        model.config._attn_implementation = attn
        return model

    fp32 = torch.float32
    prefix = tok("A shared opening that ends mid-wo")["input_ids"]
    results = {
        "tiny_fp32": run_case(
            tiny(), vocab, sequences(tok, 12, 1), device, fp32, 4 * 320 * 5, 96, support=True
        ),
        "tiny_fp32_prefix": run_case(
            tiny(),
            vocab,
            sequences(tok, 12, 2, prefix),
            device,
            fp32,
            4 * 320 * 5,
            160,
            prefix=prefix,
        ),
        "tiny_fp32_sdpa_prefix": run_case(
            tiny("sdpa"),
            vocab,
            sequences(tok, 12, 5, prefix),
            device,
            fp32,
            4 * 320 * 5,
            160,
            prefix=prefix,
        ),
        "big_vocab_fp32": run_case(
            make_big_vocab_model(),
            128256,
            random_sequences(128256, 6, 3),
            device,
            fp32,
            64 << 20,
            4096,
        ),
        "tiny_bf16_sdpa": run_case(
            tiny("sdpa"), vocab, sequences(tok, 12, 4), device, torch.bfloat16, 64 << 20, 4096
        ),
    }
    tol = 1e-4
    verdict = {name: passes(r, tol) for name, r in results.items() if "fp32" in name}
    verdict["attention_vs_masked_sdpa"] = max(attention.values()) < 2e-2
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tolerance_fp32": tol,
        "results": results,
        "attention_vs_masked_sdpa": attention,
        "attention_misaligned_control": control,
        "passed": verdict,
    }
    print_report(report, args.out)
    sys.exit(0 if all(verdict.values()) else 1)


if __name__ == "__main__":
    main()
