"""Profile of tdsdist's scoring head (`tdsdist.engine.head`) on CPU, and a prototype that avoids its costs.

Three measurements on random hidden states and a random output projection of a given shape:

1. Per operation, on one chunk of logits (`chunk_rows(V, chunk_bytes)` rows, as `score_positions`
   makes them): the projection, then each step of `logit_statistics` as written in tdsdist
   (`(logits > target).sum(-1)`, `topk`, `max(-1).values`, `exp`, `e * z`, `nan_to_num`, ...)
   next to a cheaper equivalent (a comparison written into a reused float buffer and summed,
   `amax`, `exp(out=)`, `e * z` and `nan_to_num` in place).
2. End to end, for `--rows` answer positions: the bare projection `F.linear(hidden, W)` (what a
   teacher-forced forward pays anyway), tdsdist's `score_positions`, and `fast_score_positions`
   below (same statistics; two `[rows, V]` float32 buffers allocated once and reused for every
   chunk; `torch.mm(out=)`), interleaved, median of `--repeats`.
3. Agreement of the prototype with tdsdist: ranks and top-k ids equal, largest difference of the
   log-probabilities and entropies.

Why it matters on CPU: each chunk allocates several fresh `[rows, V]` float32 tensors (64 MiB at the
default budget). Above glibc's mmap threshold (at most 32 MiB) every such allocation is a fresh
mmap whose pages fault in on first touch; on this VM that costs about as much as the arithmetic.

    python -m tools.profile.head                         # SmolLM2 head (V 49152, H 576) and 128K x 256
    python -m tools.profile.head --shape 128256x4096 --rows 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from tdsdist.engine.head import HeadOutput, chunk_rows, score_positions
from tools.common import arg_parser


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(
        __doc__.split("\n\n")[0],
        epilog="Prints markdown tables: per-operation costs, end-to-end head times, agreement.",
    )
    p.add_argument(
        "--shape",
        nargs="+",
        default=["49152x576", "128256x256"],
        help="VOCABxHIDDEN of the output projection (default: 49152x576 128256x256)",
    )
    p.add_argument("--rows", type=int, default=1024, help="answer positions end to end")
    p.add_argument("--chunk-mib", type=int, default=64, help="logits chunk budget (default 64)")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


@torch.inference_mode()
def fast_score_positions(hidden, weight, bias, targets, k, chunk_bytes, support=None):
    """Same statistics as `tdsdist.engine.head.score_positions` (one process, no soft-cap), fewer passes.

    Two float32 buffers of one chunk are allocated once: `logits` and `scratch`. Per chunk:
    projection into `logits`; rank = 1 + sum of `logits > target` written as 0/1 floats into
    `scratch` (float32 counts are exact below 2^24); top-k; row max with `amax`; `z = logits - max`
    in place; `e = exp(z)` into `scratch`; `sum e`; `sum e z` by multiplying z by e in place and
    zeroing the nan of 0 * -inf in place (the same values and summation as tdsdist's, no new tensor).
    """
    v = weight.shape[0]
    rows = chunk_rows(v, chunk_bytes)
    n = hidden.shape[0]
    m = min(rows, n)
    logits_buf = torch.empty(m, v, dtype=torch.float32, device=hidden.device)
    scratch_buf = torch.empty(m, v, dtype=torch.float32, device=hidden.device)
    parts = []
    for i in range(0, n, rows):
        h = hidden[i : i + rows]
        r = h.shape[0]
        logits, scratch = logits_buf[:r], scratch_buf[:r]
        if h.dtype == torch.float32 and weight.dtype == torch.float32:
            torch.mm(h, weight.t(), out=logits)
            if bias is not None:
                logits.add_(bias)
        else:
            logits.copy_(F.linear(h, weight, bias))
        target_logit = logits.gather(-1, targets[i : i + r].unsqueeze(-1))  # [r, 1]
        rank = torch.gt(logits, target_logit, out=scratch).sum(-1).long() + 1
        top_values, top_ids = logits.topk(k, dim=-1)
        sup = None if support is None else logits.gather(-1, support[i : i + r])
        row_max = logits.amax(-1, keepdim=True)
        z = logits.sub_(row_max)
        e = torch.exp(z, out=scratch)
        s0 = e.sum(-1)
        s1 = z.mul_(e).nan_to_num_(nan=0.0).sum(-1)
        log_s0 = s0.log()
        lse = row_max.squeeze(-1) + log_s0
        parts.append(
            HeadOutput(
                top_ids=top_ids,
                top_logprobs=top_values - lse.unsqueeze(-1),
                logprob=target_logit.squeeze(-1) - lse,
                rank=rank,
                entropy=log_s0 - s1 / s0,
                support_logprobs=None if sup is None else sup - lse.unsqueeze(-1),
            )
        )
    return HeadOutput(
        **{
            key: None
            if getattr(parts[0], key) is None
            else torch.cat([getattr(p, key) for p in parts])
            for key in vars(parts[0])
        }
    )


def timeit(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


@torch.inference_mode()
def per_op(v: int, h: int, chunk_bytes: int, k: int, repeats: int) -> list[tuple[str, str, float]]:
    """(step, tdsdist's way, ms) and (step, cheaper way, ms), on one chunk."""
    gen = torch.Generator().manual_seed(0)
    rows = chunk_rows(v, chunk_bytes)
    weight = torch.randn(v, h, generator=gen) / h**0.5
    hidden = torch.randn(rows, h, generator=gen)
    logits = F.linear(hidden, weight)
    target = logits[:, :1].clone()
    buf = torch.empty_like(logits)
    buf2 = torch.empty_like(logits)
    ops = [
        ("projection", "F.linear(hidden, W) (fresh output)", lambda: F.linear(hidden, weight)),
        (
            "projection",
            "torch.mm(hidden, W.t(), out=buf)",
            lambda: torch.mm(hidden, weight.t(), out=buf),
        ),
        ("rank count", "(logits > t).sum(-1)", lambda: (logits > target).sum(-1)),
        (
            "rank count",
            "torch.gt(logits, t, out=float buf).sum(-1)",
            lambda: torch.gt(logits, target, out=buf).sum(-1),
        ),
        ("top-k", "logits.topk(k)", lambda: logits.topk(k, dim=-1)),
        ("row max", "logits.max(-1).values", lambda: logits.max(-1).values),
        ("row max", "logits.amax(-1)", lambda: logits.amax(-1)),
        ("exp", "z.exp() (fresh)", lambda: logits.exp()),
        ("exp", "torch.exp(z, out=buf)", lambda: torch.exp(logits, out=buf)),
        (
            "sum e*z",
            "torch.nan_to_num(e * z, nan=0).sum(-1)",
            lambda: torch.nan_to_num(buf * logits, nan=0.0).sum(-1),
        ),
        (
            "sum e*z",
            "z.mul_(e).nan_to_num_(nan=0).sum(-1) (in place)",
            lambda: buf2.copy_(logits).mul_(buf).nan_to_num_(nan=0.0).sum(-1),
        ),
        ("(reference)", "buf2.copy_(logits) (part of the line above)", lambda: buf2.copy_(logits)),
        (
            "(reference)",
            "torch.empty_like(logits).fill_(0): a fresh chunk's page faults",
            lambda: torch.empty_like(logits).fill_(0),
        ),
        ("(reference)", "buf.fill_(0): the same on a reused buffer", lambda: buf.fill_(0)),
    ]
    out = []
    for step, how, fn in ops:
        fn()
        out.append((step, how, timeit(fn, repeats)[0] * 1e3))
    return out


@torch.inference_mode()
def end_to_end(v, h, rows, chunk_bytes, k, repeats):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(v, h, generator=gen) / h**0.5 * 3
    hidden = torch.randn(rows, h, generator=gen)
    targets = torch.randint(0, v, (rows,), generator=gen)
    jobs = {
        "bare": lambda: F.linear(hidden, weight),
        "tdsdist": lambda: score_positions(hidden, weight, None, targets, k, chunk_bytes),
        "prototype": lambda: fast_score_positions(hidden, weight, None, targets, k, chunk_bytes),
    }
    for fn in jobs.values():
        fn()
    times = {name: [] for name in jobs}
    for r in range(repeats):
        names = list(jobs)
        names = names[r % 3 :] + names[: r % 3]
        for name in names:
            start = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - start)
    ref = jobs["tdsdist"]()
    new = jobs["prototype"]()
    # float64 reference entropy from the same float32 logits
    logits64 = F.linear(hidden, weight).double()
    logp64 = torch.log_softmax(logits64, dim=-1)
    entropy64 = -(logp64.exp() * logp64).sum(-1)
    agree = {
        "rank equal": bool(torch.equal(ref.rank, new.rank)),
        "top_ids equal": bool(torch.equal(ref.top_ids, new.top_ids)),
        "max |d logprob|": float((ref.logprob - new.logprob).abs().max()),
        "max |d top_logprobs|": float((ref.top_logprobs - new.top_logprobs).abs().max()),
        "max |d entropy|": float((ref.entropy - new.entropy).abs().max()),
        "tdsdist entropy vs float64": float((ref.entropy.double() - entropy64).abs().max()),
        "prototype entropy vs float64": float((new.entropy.double() - entropy64).abs().max()),
    }
    return {n: statistics.median(t) for n, t in times.items()}, agree


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    chunk_bytes = args.chunk_mib << 20
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, os.cpu_count "
        f"{os.cpu_count()}, chunk budget {args.chunk_mib} MiB, k {args.top_k}, "
        f"median of {args.repeats}"
    )
    for shape in args.shape:
        v, h = (int(x) for x in shape.lower().split("x"))
        rows = chunk_rows(v, chunk_bytes)
        print()
        print(f"### V = {v}, H = {h}: one chunk of {rows} rows ({rows * v * 4 / 2**20:.0f} MiB)")
        print()
        print("| step | how | ms per chunk |")
        print("|---|---|---:|")
        for step, how, ms in per_op(v, h, chunk_bytes, args.top_k, args.repeats):
            print(f"| {step} | `{how}` | {ms:.1f} |")
        times, agree = end_to_end(v, h, args.rows, chunk_bytes, args.top_k, args.repeats)
        print()
        print(
            f"End to end, {args.rows} positions: bare projection {1e3 * times['bare']:.0f} ms, "
            f"tdsdist score_positions {1e3 * times['tdsdist']:.0f} ms "
            f"({times['tdsdist'] / times['bare']:.2f}x the bare projection), prototype "
            f"{1e3 * times['prototype']:.0f} ms ({times['prototype'] / times['bare']:.2f}x); "
            f"prototype speed-up over tdsdist {times['tdsdist'] / times['prototype']:.2f}x."
        )
        print(
            "Agreement of the prototype with tdsdist: "
            + ", ".join(
                f"{key} {val if isinstance(val, bool) else f'{val:.1e}'}"
                for key, val in agree.items()
            )
        )


if __name__ == "__main__":
    main()
