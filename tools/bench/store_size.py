"""Bytes per scored position: tdsdist's Zarr store against the published pickle format.

Runs the real scoring job (`tdsdist.jobs.score.run_score` with `tdsdist.config.build_config`) with
SmolLM2-135M-Instruct as both models (`prepare_smollm2()`; aligned context: its chat template,
base context: the published `plain` template), on the first `--examples` examples of the just-eval
Llama-2-7b-chat answers cut at `--max-output-tokens`, top-k `--top-k`. Then it measures the store on
disk (apparent bytes, i.e. the sum of file sizes, and allocated bytes, i.e. what `du` counts in
blocks), with and without the `tokenizer/` group, and writes the same information the published
way for comparison.

The published Re-Align pipeline (src/logit_analysis.py) pickles, per model, per example, per answer
position a dict with the decoded prefix (context + answer so far) and the top-k candidates. Two
pickled layouts are measured, both with k = `--top-k` and both carrying the same per-position
information as the store (top-k of both models, ranks, log-probabilities, entropies, base
log-probabilities at the aligned top-k, KL):

  merged   one list of per-position dicts per example, {"aligned_prefix": str, "base_prefix": str,
           "token": str, "aligned_top": [(token str, logprob), ...], "base_top": [...],
           "aligned_rank": int, "base_rank": int, ...} (the layout the brief describes);
  published  the published code's own layout: two files (aligned "i2i" and base "i2b"), per example
           {"id", "prompt", "probe_text", "results": [{"tokens": [{"token_id", "token", "logit",
           "prob"}, ...], "prefix": str}, ...]}, with numpy scalars as that code produces them
           (our stored logprobs stand in for its logits: same type, same size).

pickle is used ONLY here, to measure the published format; tdsdist itself never uses pickle. The
pickles are also gzip-compressed (level 6) for a fairer comparison with the compressed store.
Prints a markdown table.

    python -m tools.bench.store_size
    python -m tools.bench.store_size --examples 20 --max-output-tokens 64 --keep /tmp/store.zarr
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle  # only to measure the published format (see the module docstring)
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.common import add_data_argument, arg_parser, just_eval_data


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(
        __doc__.split("\n\n")[0],
        epilog="Prints a markdown table of bytes per scored position and the ratios.",
    )
    p.add_argument("--examples", type=int, default=20)
    p.add_argument("--max-output-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=20)
    add_data_argument(p)
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the store here and keep it (default: a temporary folder)",
    )
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def tree_bytes(path: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, files) under `path`."""
    apparent = allocated = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return apparent, allocated, files


def du_bytes(path: Path) -> int:
    """What `du -s --block-size=1` says (directories' own blocks included)."""
    import subprocess

    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else -1


def published_merged(store, plan, tok, decode_one) -> list:
    """Per example, a list of per-position dicts (see the module docstring, `merged`)."""
    out = []
    for e, item in enumerate(plan.items):
        rows = store.rows(e)
        a_ids, a_lp = store.read("aligned/top_ids", rows), store.read("aligned/top_logprobs", rows)
        b_ids, b_lp = store.read("base/top_ids", rows), store.read("base/top_logprobs", rows)
        a_rank, b_rank = store.read("aligned/rank", rows), store.read("base/rank", rows)
        a_tlp, b_tlp = store.read("aligned/logprob", rows), store.read("base/logprob", rows)
        a_ent, b_ent = store.read("aligned/entropy", rows), store.read("base/entropy", rows)
        b_sup = store.read("base/logprobs_at_aligned_top", rows)
        kl = store.read("positions/kl", rows)
        positions = []
        for t, token in enumerate(item.answer):
            positions.append(
                {
                    "aligned_prefix": tok.decode(item.aligned_context + item.answer[:t]),
                    "base_prefix": tok.decode(item.base_context + item.answer[:t]),
                    "token": decode_one(token),
                    "aligned_top": [(decode_one(i), float(v)) for i, v in zip(a_ids[t], a_lp[t])],
                    "base_top": [(decode_one(i), float(v)) for i, v in zip(b_ids[t], b_lp[t])],
                    "base_logprobs_at_aligned_top": [float(v) for v in b_sup[t]],
                    "aligned_rank": int(a_rank[t]),
                    "base_rank": int(b_rank[t]),
                    "aligned_logprob": float(a_tlp[t]),
                    "base_logprob": float(b_tlp[t]),
                    "aligned_entropy": float(a_ent[t]),
                    "base_entropy": float(b_ent[t]),
                    "kl": float(kl[t]),
                }
            )
        out.append({"id": item.example.id, "positions": positions})
    return out


def published_two_files(store, plan, tok, decode_one) -> tuple[list, list]:
    """The published code's own layout: one list per model ("i2i", "i2b"), numpy scalars."""
    files = {"aligned": [], "base": []}
    for e, item in enumerate(plan.items):
        rows = store.rows(e)
        for model, context in (("aligned", item.aligned_context), ("base", item.base_context)):
            ids = store.read(f"{model}/top_ids", rows).astype(np.int64)
            lps = store.read(f"{model}/top_logprobs", rows)
            probs = np.exp(lps)
            results = []
            for t in range(len(item.answer)):
                tokens = [
                    {
                        "token_id": ids[t, j],
                        "token": decode_one(int(ids[t, j])),
                        "logit": lps[t, j],
                        "prob": probs[t, j],
                    }
                    for j in range(ids.shape[1])
                ]
                results.append({"tokens": tokens, "prefix": tok.decode(context + item.answer[:t])})
            d = {
                "id": item.example.id,
                "prompt": tok.decode(context),
                "probe_text": tok.decode(item.answer),
                "results": results,
            }
            if model == "aligned":
                d["final_generated_text"] = tok.decode(item.answer)
            files[model].append(d)
    return files["aligned"], files["base"]


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from tdsdist.config import build_config
    from tdsdist.engine.smollm2 import prepare_smollm2
    from tdsdist.jobs.prepare import prepare
    from tdsdist.jobs.score import run_score
    from tdsdist.store import Store

    data = just_eval_data(args.data)
    folder = prepare_smollm2()
    tmp = None
    if args.keep is None:
        tmp = Path(tempfile.mkdtemp(prefix="tdsdist-store-bench-"))
        store_path = tmp / "store.zarr"
    else:
        store_path = args.keep
    flags = {
        "aligned": str(folder),
        "base": str(folder),
        "data": str(data),
        "store": str(store_path),
        "aligned_template": "chat",
        "base_template": "plain",
        "top_k": args.top_k,
        "max_output_tokens": args.max_output_tokens,
        "limit": args.examples,
        "device": "cpu",
        "overwrite": True,
    }
    config = build_config({}, flags)
    start = time.perf_counter()
    timing = run_score(config, log=lambda m: print("#", m, file=sys.stderr))
    wall = time.perf_counter() - start
    try:
        store = Store(store_path, mode="r")
        positions = int(store.meta["positions"])
        total_rows = int(store.meta["unit_starts"][-1])
        full = tree_bytes(store_path)
        tokenizer = tree_bytes(store_path / "tokenizer")
        groups = {
            g: tree_bytes(store_path / g)
            for g in ("aligned", "base", "positions", "examples", "units", "tokenizer")
        }
        du_full = du_bytes(store_path)
        du_tok = du_bytes(store_path / "tokenizer")

        plan = prepare(config).plan
        tok = store.tokenizer()
        cache: dict[int, str] = {}

        def decode_one(i: int) -> str:
            i = int(i)
            if i not in cache:
                cache[i] = tok.decode([i])
            return cache[i]

        merged = pickle.dumps(published_merged(store, plan, tok, decode_one))
        i2i, i2b = published_two_files(store, plan, tok, decode_one)
        two = [pickle.dumps(i2i), pickle.dumps(i2b)]
        sizes = {
            "merged": len(merged),
            "merged_gz": len(gzip.compress(merged, 6)),
            "two": sum(len(b) for b in two),
            "two_gz": sum(len(gzip.compress(b, 6)) for b in two),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def per(n: int) -> str:
        return f"{n / positions:,.0f}"

    store_no_tok = full[0] - tokenizer[0]
    alloc_no_tok = full[1] - tokenizer[1]
    print(
        f"Machine: {platform.machine()}, os.cpu_count {os.cpu_count()}, torch {torch.__version__},"
        f" {torch.get_num_threads()} torch threads"
    )
    print(
        f"Run: SmolLM2-135M-Instruct as both models (aligned-template chat, base-template plain),"
        f" {len(plan.items)} examples of {data.name}, max_output_tokens {args.max_output_tokens},"
        f" top-k {args.top_k}: {positions} scored positions (store rows incl. chunk padding: "
        f"{total_rows}); scoring {timing['score_seconds']:.1f} s, whole run {wall:.1f} s."
        f" pickle protocol {pickle.DEFAULT_PROTOCOL}."
    )
    print()
    print("| what | bytes | bytes per scored position | pickle / this |")
    print("|---|---:|---:|---:|")
    rows = [
        ("store without tokenizer/, apparent (sum of file sizes)", store_no_tok),
        ("store without tokenizer/, allocated (du blocks)", alloc_no_tok),
        ("store with tokenizer/, apparent", full[0]),
        ("store with tokenizer/, allocated (du blocks)", full[1]),
        ("store with tokenizer/, `du -s --block-size=1`", du_full),
        ("pickle, merged per-position dicts (both models, both prefixes)", sizes["merged"]),
        ("pickle, merged, gzip -6", sizes["merged_gz"]),
        ("pickle, published two-file layout (i2i + i2b, numpy scalars)", sizes["two"]),
        ("pickle, published two-file layout, gzip -6", sizes["two_gz"]),
    ]
    for name, n in rows:
        ratio = sizes["merged"] / n if "store" in name else None
        print(
            f"| {name} | {n:,} | {per(n)} | "
            + (f"{ratio:.1f}x (merged), {sizes['two'] / n:.1f}x (two-file) |" if ratio else "|")
        )
    print()
    print(
        "Store by group (apparent bytes, files): "
        + ", ".join(f"{g} {b[0]:,} B / {b[2]} files" for g, b in groups.items())
        + f"; `du` of tokenizer/: {du_tok:,} B."
    )


if __name__ == "__main__":
    main()
