"""Speed of tdsdist's teacher-forced Scorer against the published per-token loop, on a real model.

Model: SmolLM2-135M-Instruct (`tdsdist.engine.smollm2.prepare_smollm2()`, float32, CPU). Data: the first N
examples of the just-eval Llama-2-7b-chat answers. Context: the published `plain` base template,
tokenized with the tokenizer's default special tokens; answer: tokenized on its own without special
tokens, cut at L tokens. Three ways to score the same answer positions:

  (a) per-token loop of the published Re-Align pipeline (src/logit_analysis.py): for every answer
      position t a full forward over context + answer[:t], no KV cache, logits of the last position,
      float32 log-softmax, top-k, exact rank of the target;
  (b) `tdsdist.engine.scorer.Scorer` (token-budget batches, one forward per batch, chunked scoring head);
  (c) a bare teacher-forced forward on the SAME batches (`tools.common.bare_forward`:
      `token_budget_batches`, same padding and attention): the model body, then the output
      projection of the answer positions' hidden states only, and no statistics.
      time(c)/time(b) = tdsdist throughput / bare throughput: what tdsdist's statistics and
      bookkeeping leave of the model's own speed.

For each L the repeats of (a), (b) and (c) are interleaved (order rotated per repeat) so that the
noise of a shared machine hits all three alike. (a) is too slow to repeat in full: its forwards are
split into `--repeats` strided slices (slice r = positions r, r + R, r + 2R, ...; every slice has
the same mix of prefix lengths), one slice run in each repeat, and (a)'s seconds per position is the
median over slices. (b) and (c) run in full in every repeat; their median is
reported.

The machine is shared: before each round the script waits (up to `--quiet-wait` s) for other
processes to go quiet, measures how many cores other processes used during the round (from
/proc/stat minus this process's own ticks), and drops rounds in which they used `--quiet-cores` or
more, as long as 3 clean rounds remain. CPU time (all threads) is reported beside wall time; it is
not immune to contention either (OpenMP threads spin while a sibling is descheduled). Prints
markdown tables.

    python -m tools.bench.speed                  # defaults: L in 32 64 128 256, 4/4/2/1 examples
    python -m tools.bench.speed --lengths 64 --examples 8 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.engine.smollm2 import prepare_smollm2
from tdsdist.inputs.data import Fields, load_examples
from tdsdist.inputs.plan import tokenize_context
from tdsdist.inputs.templates import PLAIN_TEMPLATE
from tools.common import (
    add_data_argument,
    arg_parser,
    bare_forward,
    just_eval_data,
    print_report,
)

DEFAULT_EXAMPLES = {32: 4, 64: 4, 128: 2, 256: 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(
        __doc__.split("\n\n")[0],
        epilog="Prints a markdown table of seconds per scored position and the ratios.",
    )
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[32, 64, 128, 256],
        help="answer cuts L in tokens (default: 32 64 128 256)",
    )
    p.add_argument(
        "--examples",
        type=int,
        default=None,
        help="examples per L (default: 4 for L <= 64, 2 for 128, 1 for 256)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="interleaved rounds per L: (b) and (c) run in full in each, (a) one of "
        "this many strided slices of its positions (default 10, at least 3)",
    )
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-tokens-per-batch", type=int, default=8192)
    p.add_argument(
        "--logits-chunk-mib",
        type=int,
        default=64,
        help="Scorer's chunk budget (default: the CLI default, 64 MiB)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="a round is clean when other processes used fewer cores than this "
        "(default 0.3); unclean rounds are dropped if 3 clean ones remain",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="seconds to wait, before each round, for other processes to go quiet "
        "(default 10; 0: do not wait)",
    )
    p.add_argument(
        "--naive-logits",
        choices=("last", "full"),
        default="last",
        help="(a) projects only the last position (`last`, logits_to_keep=1: the "
        "stronger baseline, default) or every position as the published code "
        "does (`full`: model(ids).logits[:, -1])",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    add_data_argument(p)
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be at least 3")
    return args


def load_model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepare_smollm2()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, tok, model


def make_sequences(tok, examples, length: int) -> list[ContextAnswer]:
    seqs = []
    for ex in examples:
        context = tokenize_context(tok, PLAIN_TEMPLATE.format(q=ex.instruction), True)
        answer = list(tok(ex.answer, add_special_tokens=False)["input_ids"])[:length]
        seqs.append(ContextAnswer(context, answer))
    return seqs


# ------------------------------------------------------------------------------------------------
# (a) the published per-token loop


@torch.inference_mode()
def naive_positions(model, work, k: int, full_logits: bool):
    """Score the (sequence, t) pairs in `work`; returns {(i, t): (rank, logprob, top_ids)}."""
    out = {}
    for seq_index, seq, t in work:
        ids = torch.tensor([seq.context + seq.answer[:t]])
        if full_logits:
            logits = model(ids, use_cache=False).logits[:, -1, :]
        else:
            logits = model(ids, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        logprobs = F.log_softmax(logits.float(), dim=-1)[0]
        top = logprobs.topk(k)
        target = seq.answer[t]
        rank = int((logprobs > logprobs[target]).sum()) + 1
        out[(seq_index, t)] = (rank, float(logprobs[target]), top.indices)
    return out


def timed(fn):
    """(wall seconds, CPU seconds of the whole process, result)."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


class OtherLoad:
    """CPU cores used by OTHER processes since `start()`: all busy ticks minus this process's.

    The machine is shared: other jobs' threads compete with torch's for the 2 cores, and with
    OpenMP an oversubscribed core slows a whole parallel region, not just a share of it.
    """

    HZ = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy() -> int:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal

    @staticmethod
    def _own() -> int:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def start(self) -> OtherLoad:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def cores(self) -> float:
        seconds = time.perf_counter() - self.t0
        ticks = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, ticks / self.HZ / max(seconds, 1e-9))


def wait_for_quiet(threshold: float, budget: float) -> float:
    """Sleep in 1 s probes until other processes use < `threshold` cores; give up after `budget`."""
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        probe = OtherLoad().start()
        time.sleep(1.0)
        if probe.cores() < threshold:
            break
    return time.perf_counter() - start


def machine_line(threads: int) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
        f"(asked {threads}), interop {torch.get_num_interop_threads()}, "
        f"os.cpu_count {os.cpu_count()}, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = just_eval_data(args.data)
    n_max = max(args.examples or DEFAULT_EXAMPLES.get(L, 4) for L in args.lengths)
    examples = load_examples(data, Fields(), n_max)
    folder, tok, model = load_model_and_tokenizer()
    scorer = Scorer.for_model(
        model,
        len(tok),
        args.top_k,
        args.logits_chunk_mib << 20,
        args.max_tokens_per_batch,
        torch.device("cpu"),
    )
    full = args.naive_logits == "full"
    print(f"# tools.bench.speed: {folder.name}, data {data}", file=sys.stderr)
    print(f"# {machine_line(args.threads)}", file=sys.stderr)

    # Warm-up: the first forward of each shape family pays one-off costs (~3 s here).
    warm = make_sequences(tok, examples[:2], 16)
    naive_positions(model, [(0, warm[0], t) for t in range(2)], args.top_k, full)
    scorer.score(warm)
    bare_forward(scorer.runner, warm, args.max_tokens_per_batch)

    rows = []
    for L in args.lengths:
        n = args.examples or DEFAULT_EXAMPLES.get(L, 4)
        seqs = make_sequences(tok, examples[:n], L)
        positions = sum(len(s.answer) for s in seqs)
        work = [(i, s, t) for i, s in enumerate(seqs) for t in range(len(s.answer))]
        # Strided slices: every slice holds every `repeats`-th position, so all slices have the
        # same mix of prefix lengths and their seconds per position are comparable (median).
        slices = [work[r :: args.repeats] for r in range(args.repeats)]
        # Per-L warm-up: the longest naive forward, one Scorer call and one bare call.
        naive_positions(
            model, [max(work, key=lambda w: len(w[1].context) + w[2])], args.top_k, full
        )
        scorer.score(seqs)
        bare_forward(scorer.runner, seqs, args.max_tokens_per_batch)
        # Per repeat and variant: (wall seconds, CPU seconds of all threads) per scored position.
        per = {"a": [], "b": [], "c": []}
        others = []
        naive = {}
        scored = None
        for r in range(args.repeats):
            jobs = {
                "a": lambda part=slices[r]: naive_positions(model, part, args.top_k, full),
                "b": lambda seqs=seqs: scorer.score(seqs),
                "c": lambda seqs=seqs: bare_forward(scorer.runner, seqs, args.max_tokens_per_batch),
            }
            waited = wait_for_quiet(args.quiet_cores, args.quiet_wait)
            load = OtherLoad().start()
            names = "".join(per)
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                wall, cpu, result = timed(jobs[name])
                count = len(slices[r]) if name == "a" else positions
                per[name].append((wall / count, cpu / count))
                if name == "a":
                    naive.update(result)
                elif name == "b":
                    scored = result
                else:
                    assert result == positions
            others.append(load.cores())
            print(
                f"# L={L} repeat {r}: ms/pos wall (cpu): "
                + ", ".join(
                    f"{k} {1e3 * v[-1][0]:.2f} ({1e3 * v[-1][1]:.2f})" for k, v in per.items()
                )
                + f"; other processes {others[-1]:.2f} cores (waited {waited:.0f} s before)",
                file=sys.stderr,
            )
        # Rounds during which other processes used >= quiet_cores are dropped (all three
        # variants of the round), as long as at least 3 clean rounds remain.
        clean = [i for i, o in enumerate(others) if o < args.quiet_cores]
        kept = clean if len(clean) >= 3 else list(range(args.repeats))
        per = {k: [v[i] for i in kept] for k, v in per.items()}
        # Agreement of (a) and (b) on the same positions (float32 kernels differ slightly).
        keys = [(i, t) for i, s in enumerate(seqs) for t in range(len(s.answer))]
        same_rank = sum(int(scored["rank"][j]) == naive[key][0] for j, key in enumerate(keys))
        max_dlp = max(
            abs(float(scored["logprob"][j]) - naive[key][1]) for j, key in enumerate(keys)
        )
        same_top1 = sum(
            int(scored["top_ids"][j, 0]) == int(naive[key][2][0]) for j, key in enumerate(keys)
        )
        row = {
            "L": L,
            "examples": n,
            "positions": positions,
            "same_rank": same_rank,
            "same_top1": same_top1,
            "max_dlp": max_dlp,
            "kept": len(kept),
            "clean": len(clean),
            "others": statistics.median(others[i] for i in kept),
        }
        for name, values in per.items():
            walls, cpus = [v[0] for v in values], [v[1] for v in values]
            row[name] = statistics.median(walls)
            row[name + "_min"], row[name + "_max"] = min(walls), max(walls)
            row[name + "_cpu"] = statistics.median(cpus)
        # Paired ratios: (a), (b) and (c) of one repeat ran back to back.
        row["ab_paired"] = statistics.median(a[0] / b[0] for a, b in zip(per["a"], per["b"]))
        row["cb_paired"] = statistics.median(c[0] / b[0] for c, b in zip(per["c"], per["b"]))
        rows.append(row)

    print(f"Machine: {machine_line(args.threads)}")
    print(f"Model: SmolLM2-135M-Instruct float32 (vocab {len(tok)}), data {data}")
    print(
        f"(a): published per-token loop, logits={args.naive_logits}; (b): Scorer, k={args.top_k},"
        f" chunk {args.logits_chunk_mib} MiB, max_tokens_per_batch {args.max_tokens_per_batch};"
        f" (c): bare body + LM head on answer rows, same batches. {args.repeats} interleaved"
        f" rounds; medians over the rounds in which other processes used < {args.quiet_cores}"
        " cores (all rounds when fewer than 3 were clean); (a): strided slices of its positions."
        f" Load average at the end: {os.getloadavg()[0]:.2f}."
    )
    print()
    print(
        "Wall clock, ms per scored position, median [min-max]; ratios of the medians, "
        "(in parentheses: of the minima; median of per-repeat paired ratios)."
    )
    print()
    print(
        "| L | examples | positions | (a) per-token | (b) tdsdist Scorer | (c) bare forward "
        "| speed-up (a)/(b) | tdsdist/bare throughput = (c)/(b) | rounds kept (clean) "
        "| other processes, cores (kept rounds) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [
            f"{1e3 * r[k]:.{d}f} [{1e3 * r[k + '_min']:.{d}f}-{1e3 * r[k + '_max']:.{d}f}]"
            for k, d in (("a", 1), ("b", 2), ("c", 2))
        ]
        print(
            f"| {r['L']} | {r['examples']} | {r['positions']} | "
            + " | ".join(cells)
            + f" | **{r['a'] / r['b']:.1f}x** ({r['a_min'] / r['b_min']:.1f}x; "
            f"{r['ab_paired']:.1f}x) | **{r['c'] / r['b']:.3f}** "
            f"({r['c_min'] / r['b_min']:.3f}; {r['cb_paired']:.3f}) "
            f"| {r['kept']} ({r['clean']}) | {r['others']:.2f} |"
        )
    print()
    print(
        "CPU time of all threads (time.process_time), ms per scored position, median; and the "
        "agreement of (a) and (b) on the same positions."
    )
    print()
    print(
        "| L | (a) CPU | (b) CPU | (c) CPU | (a)/(b) CPU | (c)/(b) CPU "
        "| same rank a vs b | same top-1 | max abs d logprob |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['L']} | {1e3 * r['a_cpu']:.1f} | {1e3 * r['b_cpu']:.2f} "
            f"| {1e3 * r['c_cpu']:.2f} | {r['a_cpu'] / r['b_cpu']:.1f}x "
            f"| {r['c_cpu'] / r['b_cpu']:.3f} | {r['same_rank']}/{r['positions']} "
            f"| {r['same_top1']}/{r['positions']} | {r['max_dlp']:.1e} |"
        )

    if args.out:
        print_report({"rows": rows}, args.out)


if __name__ == "__main__":
    main()
