"""Peak memory of tdsdist's Scorer with a 128K vocabulary, against the bare body forward.

Model: `tdsdist_testkit.make_big_vocab_model()` (Llama, vocabulary 128256, hidden 256, 2 layers,
eager attention, float32: the logits dominate memory as in real models, the body costs little).
Batch: `--sequences` sequences of `--context` + `--answer` random token ids (default 16 x (24 +
1000): 16 x 1023 = 16368 tokens fed, 16000 answer positions). Every variant runs in a fresh
subprocess, which reports its resident set size after the model is built and the inputs made
(`VmRSS`), and its peak resident set size at the end (`resource.getrusage(...).ru_maxrss`):

  body     the bare body forward `model.base_model(ids, attention_mask)` (hidden states only): the
           least any teacher-forced scorer must hold;
  scorer   `tdsdist.engine.scorer.Scorer.score` on the same sequences in one batch (max_tokens_per_batch
           16384), at each `--chunk-mib` logits-chunk budget (the CLI default is 64 MiB);
  body2    two models (the pair's case): both bare body forwards on the batch, both hidden
           states kept, as any scorer of the pair must;
  pair     `PairScorer.score` on the same batch (both bodies, the pair head, exact divergences);
           its ratio is to body2;
  naive    for contrast, what a straightforward batched implementation does: the full logits
           `model(ids).logits` (`[B, T, V]` float32) and a float32 `log_softmax` of them. It needs
           about 2 x B x T x V x 4 bytes (16.8 GB at the default size), so it is skipped, with a
           note, when /proc/meminfo's MemAvailable is short of that plus a margin.

Also reported: the peak during model construction (ru_maxrss right after it, to show that the run's
peak is not a left-over of loading) and the wall time of the measured call. Each variant is repeated
`--repeats` times (fresh process each time) and the median is reported. Ratios are to the bare body
forward measured in the same run. Prints a markdown table.

    python -m tools.bench.memory
    python -m tools.bench.memory --chunk-mib 64 32 16 4 --naive skip
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from tools.common import ROOT, arg_parser, child_flags, child_json, peak_rss_kib, proc_status_kib

MIB = 1 << 20
PAIRED = ("body2", "pair")  # variants that hold two models (the pair head's case)


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(
        __doc__.split("\n\n")[0],
        epilog="Prints a markdown table of peak RSS per variant and ratios to the body forward.",
    )
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--context", type=int, default=24, help="context tokens per sequence")
    p.add_argument("--answer", type=int, default=1000, help="answer tokens per sequence")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument(
        "--chunk-mib",
        type=int,
        nargs="+",
        default=[64, 32, 16],
        help="Scorer logits-chunk budgets to try (default: 64 32 16; 64 is the CLI default)",
    )
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="fresh processes per variant, interleaved (median; default 1: peak RSS repeats to "
        "within a few MiB and one round takes ~7 min)",
    )
    p.add_argument(
        "--naive",
        choices=("auto", "run", "skip"),
        default="auto",
        help="the full-logits contrast: run if memory allows (auto), always, or never",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one variant and report
    p.add_argument("--chunk", type=int, default=64, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    import gc

    import torch
    from tdsdist_testkit import make_big_vocab_model

    from tdsdist.engine.runner import ModelRunner
    from tdsdist.engine.scorer import AnswerPair, ContextAnswer, PairScorer, Scorer

    torch.set_num_threads(args.threads)
    model = make_big_vocab_model(vocab_size=args.vocab)
    other = make_big_vocab_model(vocab_size=args.vocab, seed=1) if args.child in PAIRED else None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.sequences, args.context + args.answer), generator=gen)
    seqs = [
        ContextAnswer(row[: args.context].tolist(), row[args.context :].tolist()) for row in ids
    ]
    fed = ids[:, :-1].contiguous()  # the answer's last token is never fed
    mask = torch.ones_like(fed)
    gc.collect()
    after_load = proc_status_kib("VmRSS") * 1024
    load_peak = peak_rss_kib() * 1024

    start = time.perf_counter()
    with torch.inference_mode():
        if args.child == "body":
            out = model.base_model(input_ids=fed, attention_mask=mask, use_cache=False)
            checksum = float(out.last_hidden_state[:, -1].sum())
        elif args.child == "scorer":
            tokens = args.sequences * (args.context + args.answer - 1)
            scorer = Scorer.for_model(
                model, args.vocab, args.top_k, args.chunk * MIB, max(tokens, 1), torch.device("cpu")
            )
            res = scorer.score(seqs)
            checksum = float(res["logprob"].sum())
        elif args.child == "body2":  # both bodies, both hidden states kept: what a pair needs
            outs = [
                m.base_model(input_ids=fed, attention_mask=mask, use_cache=False).last_hidden_state
                for m in (model, other)
            ]
            checksum = float(sum(o[:, -1].sum() for o in outs))
        elif args.child == "pair":
            tokens = args.sequences * (args.context + args.answer - 1)
            cpu = torch.device("cpu")
            pair = PairScorer(
                ModelRunner(model, args.vocab, cpu),
                ModelRunner(other, args.vocab, cpu),
                args.top_k,
                args.chunk * MIB,
                max(tokens, 1),
            )
            res = pair.score([AnswerPair(s.context, s.context, s.answer) for s in seqs])
            checksum = float(res["positions/js"].sum())
        elif args.child == "naive":
            logits = model(input_ids=fed, attention_mask=mask, use_cache=False).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            checksum = float(logprobs[:, -1, 0].sum())
        else:
            raise SystemExit(f"unknown variant {args.child}")
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "after_load": after_load,
                "load_peak": load_peak,
                "peak": peak_rss_kib() * 1024,
                "seconds": seconds,
                "checksum": checksum,
            }
        )
    )


def run_child(args, variant: str, chunk: int = 64) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.memory",  # this module, from the repository root (cwd below)
        "--child",
        variant,
        "--chunk",
        str(chunk),
        *child_flags(args, "sequences", "context", "answer", "vocab", "top_k", "threads"),
    ]
    return child_json(cmd, cwd=ROOT)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import torch

    fed_tokens = args.sequences * (args.context + args.answer - 1)
    naive_need = 2 * fed_tokens * args.vocab * 4
    variants = [("body", 64)] + [("scorer", c) for c in args.chunk_mib]
    variants += [("body2", 64), ("pair", 64)]
    naive_note = ""
    if args.naive == "run" or (args.naive == "auto" and mem_available() > naive_need + 3 * 1024**3):
        variants.append(("naive", 64))
    elif args.naive == "auto":
        naive_note = (
            f"naive skipped: needs ~{naive_need / 1e9:.1f} GB, "
            f"MemAvailable {mem_available() / 1e9:.1f} GB"
        )

    results: dict[tuple[str, int], list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):  # interleaved: one process per variant per round
        for v in variants:
            res = run_child(args, *v)
            results[v].append(res)
            print(
                f"# round {r} {v[0]} chunk {v[1]} MiB: peak {res['peak'] / MIB:.0f} MiB, "
                f"after load {res['after_load'] / MIB:.0f} MiB, {res['seconds']:.2f} s",
                file=sys.stderr,
            )

    def med(v, key):
        return statistics.median(x[key] for x in results[v])

    body = ("body", 64)
    print(
        f"Machine: {platform.machine()}, os.cpu_count {os.cpu_count()}, torch {torch.__version__}"
        f", {args.threads} torch threads, MemTotal-ish {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"
    )
    print(
        f"Model: make_big_vocab_model(vocab {args.vocab}, hidden 256, 2 layers, float32, eager); "
        f"batch {args.sequences} x ({args.context} + {args.answer}) = {fed_tokens} tokens fed, "
        f"{args.sequences * args.answer} answer positions; top-k {args.top_k}; "
        f"median of {args.repeats} fresh processes per variant."
    )
    if naive_note:
        print(naive_note)
    print()
    print(
        "| variant | peak RSS MiB | RSS after load MiB | peak during load MiB "
        "| peak - after load MiB | peak / body peak | (peak - load) / body's | seconds "
        "| peak RSS of each run MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for v in variants:
        name = {
            "body": "bare body forward (model.base_model)",
            "scorer": f"tdsdist Scorer.score, chunk {v[1]} MiB"
            + (" (default)" if v[1] == 64 else ""),
            "naive": "naive: model(ids).logits + float32 log_softmax",
            "body2": "two models: both bare body forwards, both hidden states kept",
            "pair": "two models: tdsdist PairScorer.score (pair head), chunk 64 MiB",
        }[v[0]]
        peak, after = med(v, "peak"), med(v, "after_load")
        ref = ("body2", 64) if v[0] in PAIRED else body  # a pair is compared with two bodies
        ref_peak, ref_delta = med(ref, "peak"), med(ref, "peak") - med(ref, "after_load")
        print(
            f"| {name} | {peak / MIB:.0f} | {after / MIB:.0f} | {med(v, 'load_peak') / MIB:.0f} "
            f"| {(peak - after) / MIB:.0f} | {peak / ref_peak:.2f}x "
            f"| {(peak - after) / ref_delta:.2f}x | {med(v, 'seconds'):.2f} "
            f"| {', '.join(str(round(x['peak'] / MIB)) for x in results[v])} |"
        )


if __name__ == "__main__":
    main()
