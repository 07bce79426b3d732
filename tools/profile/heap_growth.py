"""Diagnose resident-memory growth of `Scorer.score` on CPU: live tensors, or freed heap kept by glibc?

Runs `tdsdist.engine.scorer.Scorer.score` once on the `make_big_vocab_model()` batch of
`tools.bench.memory` (16 x (24 + 1000) random tokens, vocabulary 128256) with the given logits
chunk budget, samples the process's VmRSS after every `--every`-th chunk of the scoring head (by
wrapping `tdsdist.engine.head.score_rows`), then reports the RSS after `score` returns and after
`malloc_trim(0)` (glibc gives freed heap memory back to the system). If the RSS grows chunk after
chunk and `malloc_trim` returns it, the growth is freed-but-retained heap (fragmentation by the
per-chunk allocations), not memory tdsdist holds. Whether it shows depends on glibc's dynamic mmap
threshold and arena state, so it varies between runs: try a few. Prints a markdown table.

    python -m tools.profile.heap_growth --chunk-mib 16
    python -m tools.profile.heap_growth --chunk-mib 32 --sequences 8
"""

from __future__ import annotations

import argparse
import ctypes
import time

import torch

from tools.common import arg_parser, peak_rss_kib, proc_status_kib


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(
        __doc__.split("\n\n")[0],
        epilog="Prints a markdown table of RSS along the scoring head's chunks.",
    )
    p.add_argument("--chunk-mib", type=int, default=16, help="logits chunk budget (default 16)")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--context", type=int, default=24)
    p.add_argument("--answer", type=int, default=1000)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--every", type=int, default=50, help="sample RSS every N chunks (default 50)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def rss_mib() -> int:
    return proc_status_kib("VmRSS") // 1024


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from tdsdist_testkit import make_big_vocab_model

    import tdsdist.engine.head as head
    from tdsdist.engine.scorer import ContextAnswer, Scorer

    model = make_big_vocab_model(vocab_size=args.vocab)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.sequences, args.context + args.answer), generator=gen)
    seqs = [ContextAnswer(r[: args.context].tolist(), r[args.context :].tolist()) for r in ids]
    original = head.score_rows
    count = [0]
    trace: list[tuple[int, int]] = []

    def traced(*a, **kw):
        out = original(*a, **kw)
        count[0] += 1
        if count[0] % args.every == 1:
            trace.append((count[0], rss_mib()))
        return out

    head.score_rows = traced  # score_positions looks it up in the module at every call
    after_load = rss_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        scorer = Scorer.for_model(
            model, args.vocab, 20, args.chunk_mib << 20, 1 << 30, torch.device("cpu")
        )
        scorer.score(seqs)
    seconds = time.perf_counter() - start
    after_score = rss_mib()
    peak = peak_rss_kib() // 1024
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    after_trim = rss_mib()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; chunk {args.chunk_mib} MiB"
        f" ({head.chunk_rows(args.vocab, args.chunk_mib << 20)} rows), {count[0]} chunks, "
        f"{seconds:.1f} s"
    )
    print()
    print("| when | RSS MiB |")
    print("|---|---:|")
    print(f"| after model load | {after_load} |")
    for n, mib in trace:
        print(f"| after head chunk {n} | {mib} |")
    print(f"| after Scorer.score returned | {after_score} |")
    print(f"| peak (ru_maxrss) | {peak} |")
    print(f"| after malloc_trim(0) | {after_trim} |")


if __name__ == "__main__":
    main()
