"""`tdsdist serve` under load, side by side with the batch commands in one run.

(a) `/v1/score` with 8 and 32 concurrent clients sending just-eval answers: scored positions/s,
    against `tdsdist score` on the same answers (a fresh process; model loading excluded).
(b) `/v1/generate` with 1, 8 and 32 concurrent streams (SSE): tokens/s, time to first token,
    inter-token latency p50 / p99.
(c) Lockstep cost: the streamed generate-and-score tokens/s against aligned-only `tdsdist
    generate` at the same batch (1 and 8 prompts, the same prompts and max new tokens).
(d) Memory: the server's RSS when idle (after loading) and its peak, against `score`'s peak.

Models: SmolLM2-135M-Instruct as both sides (the demo's conversion; chat template on the aligned
side, `plain` on the base side, as `tdsdist demo`), or `--aligned/--base` folders. The server and
every child get `--threads` torch threads; the client threads share the same cores.

    python -m tools.bench.serve --examples 20 --gen-tokens 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.common import (
    SHAPES,
    add_data_argument,
    arg_parser,
    child_json,
    just_eval_data,
    peak_rss_kib,
    print_report,
    random_llama,
)

# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


class Server:
    """`python -m tdsdist.serve` on 127.0.0.1, a free port."""

    def __init__(self, models: list[str], args: argparse.Namespace, max_new_tokens: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TDSDIST_API_KEY": ""}
        cmd = [
            sys.executable,
            "-m",
            "tdsdist.serve",
            "--port",
            "0",
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--max-new-tokens",
            str(max_new_tokens),
            *models,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("serving on "):
                self.url = line.split()[-1]
                return
        raise RuntimeError(f"the server did not start (exit {self.proc.wait()})")

    def status_kib(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def load_examples(path: Path, n: int, chars: int | None) -> list[dict[str, str]]:
    """The first `n` just-eval examples as (id, instruction, answer); Llama-2's `</s>` dropped,
    each answer cut to its first `chars` characters if given (to fit a CPU's time)."""
    records = json.loads(path.read_text())[:n]
    out = []
    for r in records:
        answer = r["output"][0] if isinstance(r["output"], list) else r["output"]
        out.append(
            {
                "id": str(r["id"]),
                "instruction": r["pure_input"],
                "answer": answer.removesuffix("</s>")[:chars],
            }
        )
    return out


def score_load(url: str, examples: list[dict], clients: int, passes: int) -> dict:
    """Every example `passes` times through `/v1/score`, `clients` requests in flight."""
    import httpx

    bodies = [{"instruction": e["instruction"], "answer": e["answer"]} for e in examples] * passes
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:

        def one(body: dict) -> int:
            r = client.post(url + "/v1/score", json=body)
            r.raise_for_status()
            return len(r.json()["positions"])

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            positions = sum(pool.map(one, bodies))
        seconds = time.perf_counter() - start
    return {"positions": positions, "seconds": seconds, "positions_per_s": positions / seconds}


def generate_load(url: str, prompts: list[str], streams: int, tokens: int) -> dict:
    """`streams` concurrent SSE streams (greedy, `tokens` new tokens at most), started together."""
    import httpx

    barrier = threading.Barrier(streams)

    def one(prompt: str) -> tuple[float, list[float]]:
        body = {"instruction": prompt, "max_new_tokens": tokens, "stream": True}
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            sent = time.perf_counter()
            times = []
            with client.stream("POST", url + "/v1/generate", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"t":' in line:
                        times.append(time.perf_counter())
        return sent, times

    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(one, [prompts[i % len(prompts)] for i in range(streams)]))
    start = min(s for s, _ in results)
    end = max(t[-1] for _, t in results if t)
    total = sum(len(t) for _, t in results)
    gaps = [b - a for _, t in results for a, b in zip(t, t[1:])]
    first = [t[0] - s for s, t in results if t]
    return {
        "tokens": total,
        "seconds": end - start,
        "tokens_per_s": total / (end - start),
        "ttft_s_median": statistics.median(first),
        "itl_ms_p50": 1000 * quantile(gaps, 0.5),
        "itl_ms_p99": 1000 * quantile(gaps, 0.99),
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------------------------
# The batch commands, each in a fresh process (its own peak RSS)
# ------------------------------------------------------------------------------------------------


def child_score(args: argparse.Namespace) -> dict:
    import torch

    from tdsdist.config import ScoreConfig
    from tdsdist.jobs.score import run_score

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = ScoreConfig(
            aligned=args.aligned,
            base=args.base,
            data=args.child_data,
            store=f"{tmp}/s.zarr",
            aligned_template="chat",
            base_template="plain",
            device=args.device,
            dtype=args.dtype,
        )
        timing = run_score(config, log=lambda m: None)
    return {
        "positions": timing["positions"],
        "seconds": timing["score_seconds"],
        "positions_per_s": timing["positions"] / timing["score_seconds"],
        "peak_rss_mib": peak_rss_kib() / 1024,
    }


def child_generate(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    from tdsdist.config import GenerateConfig
    from tdsdist.jobs.generate import run_generate

    torch.set_num_threads(args.threads)
    prompts = json.loads(Path(args.child_data).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answers.json"
        config = GenerateConfig(
            aligned=args.aligned,
            data=args.child_data,
            out=str(out),
            max_new_tokens=args.gen_tokens,
            batch_size=len(prompts),
            device=args.device,
            dtype=args.dtype,
        )
        seconds = run_generate(config, log=lambda m: None)["generate_seconds"]
        answers = [r["output"][0] for r in json.loads(out.read_text())]
    tok = AutoTokenizer.from_pretrained(args.aligned)
    tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run_child(kind: str, args: argparse.Namespace, data: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.serve",
        "--child",
        kind,
        "--child-data",
        str(data),
        "--aligned",
        args.aligned,
        "--base",
        args.base,
        "--threads",
        str(args.threads),
        "--gen-tokens",
        str(args.gen_tokens),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
    ]
    return child_json(cmd, env=env)


def save_random(args: argparse.Namespace) -> str:
    """A random-weight Llama of `--random-shape` saved with `--tokenizer`'s files (a temporary
    folder removed at exit); served as both sides."""
    import atexit
    import shutil

    import torch
    from transformers import AutoTokenizer

    if not args.tokenizer:
        raise SystemExit("--random-shape needs --tokenizer")
    folder = tempfile.mkdtemp(prefix="tdsdist-bench-serve-")
    atexit.register(shutil.rmtree, folder, True)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model = random_llama(
        args.random_shape, len(tok), getattr(torch, args.dtype), torch.device(args.device)
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the server and the children load their own copies
    return folder


# ------------------------------------------------------------------------------------------------


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = arg_parser(__doc__)
    add_data_argument(parser)
    parser.add_argument("--aligned", help="aligned model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--base", help="base model folder (default: the aligned one)")
    parser.add_argument("--examples", type=int, default=20, help="just-eval answers scored")
    parser.add_argument("--passes", type=int, default=2, help="times each answer is sent per load")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--gen-tokens", type=int, default=32, help="max new tokens per stream")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--answer-chars", type=int, help="cut each answer to this many characters")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--random-shape",
        choices=sorted(SHAPES),
        help="serve a random-weight Llama of this shape (tools.common.SHAPES) with --tokenizer's tokenizer, as both sides",
    )
    parser.add_argument("--tokenizer", help="tokenizer folder for --random-shape")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=("score", "generate"), help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.random_shape and not args.child:
        args.aligned = save_random(args)
    if args.aligned is None:
        from tdsdist.engine.smollm2 import prepare_smollm2

        args.aligned = str(prepare_smollm2())
    args.base = args.base or args.aligned
    if args.child:
        print(json.dumps((child_score if args.child == "score" else child_generate)(args)))
        return

    examples = load_examples(just_eval_data(args.data), args.examples, args.answer_chars)
    prompts = [e["instruction"] for e in examples]
    models = ["--aligned", args.aligned, "--base", args.base, "--base-template", "plain"]
    report: dict = {
        "models": {"aligned": args.aligned, "base": args.base},
        "threads": args.threads,
        "examples": len(examples),
        "gen_tokens": args.gen_tokens,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "answers.json"
        data.write_text(
            json.dumps(
                [
                    {"id": e["id"], "pure_input": e["instruction"], "output": e["answer"]}
                    for e in examples
                ]
            )
        )
        server = Server(models, args, max(args.gen_tokens, 1))
        try:
            time.sleep(1.0)
            report["server_idle_rss_mib"] = server.status_kib("VmRSS") / 1024
            score_load(server.url, examples[:2], 2, 1)  # warm-up
            generate_load(server.url, prompts, 2, 4)
            score_runs: dict[int, list[dict]] = {c: [] for c in args.clients}
            gen_runs: dict[int, list[dict]] = {s: [] for s in args.streams}
            for r in range(args.repeats):
                order = args.clients if r % 2 == 0 else args.clients[::-1]
                for c in order:
                    score_runs[c].append(score_load(server.url, examples, c, args.passes))
                order = args.streams if r % 2 == 0 else args.streams[::-1]
                for s in order:
                    gen_runs[s].append(generate_load(server.url, prompts, s, args.gen_tokens))
            report["server_peak_rss_mib"] = server.status_kib("VmHWM") / 1024
        finally:
            server.stop()
        report["serve_score"] = {str(c): median_of(runs) for c, runs in score_runs.items()}
        report["serve_generate"] = {str(s): median_of(runs) for s, runs in gen_runs.items()}
        score_runs_batch = [run_child("score", args, data) for _ in range(args.repeats)]
        report["score"] = median_of(score_runs_batch)
        report["generate"] = {}
        for s in sorted({1, min(8, len(prompts))} & set(args.streams) or {1}):
            pdata = Path(tmp) / f"prompts-{s}.json"
            pdata.write_text(json.dumps([prompts[i % len(prompts)] for i in range(s)]))
            report["generate"][str(s)] = median_of(
                [run_child("generate", args, pdata) for _ in range(args.repeats)]
            )
    ratios: dict = {}
    for c, v in report["serve_score"].items():
        ratios[f"score_{c}_clients_over_score"] = (
            v["positions_per_s"] / report["score"]["positions_per_s"]
        )
    gen = report["serve_generate"]
    one = gen[str(min(args.streams))]["tokens_per_s"]
    for s in gen:
        if s != str(min(args.streams)):
            ratios[f"generate_{s}_streams_over_1"] = gen[s]["tokens_per_s"] / one
        if s in report["generate"]:
            ratios[f"lockstep_{s}_over_aligned_only"] = (
                gen[s]["tokens_per_s"] / report["generate"][s]["tokens_per_s"]
            )
    ratios["server_idle_rss_over_score_peak"] = (
        report["server_idle_rss_mib"] / report["score"]["peak_rss_mib"]
    )
    report["ratios"] = ratios
    print_report(report, args.out)


if __name__ == "__main__":
    main()
