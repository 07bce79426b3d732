"""Lockstep generate-and-score (`engine/lockstep.py`) against aligned-only decoding
(`engine/decoder.py`), directly (no HTTP), side by side in one run; with a per-step breakdown.

Each child process loads the pair as `tdsdist serve` does (SmolLM2-135M-Instruct as both sides,
chat template on the aligned side, `plain` on the base side) and times, for batch 1 and batch 8
(the same just-eval instructions, greedy, the same `--tokens`): `Decoder.generate` on the aligned
runner, and `LockstepDecoder` stepping the same requests (added together) until all finish. The
ratio lockstep / aligned-only is taken inside one child (the same process, interleaved).

`--code DIR ...` runs one child per folder (its `tdsdist` first on PYTHONPATH), alternating
folders per repeat, so that an old checkout and this one are measured in the same run:

    python -m tools.bench.lockstep --code OLD_CHECKOUT . --repeats 3

The breakdown (`--profile`, one extra pass of the batch-8 lockstep after the timed ones) wraps the
decoder's parts with timers: the bodies' forwards, the pair head, the policy's choice, cache
handling, and the rest of the step (Python per-request work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _prompts(n: int) -> list[str]:
    records = json.loads(
        (ROOT / "tdsdist/resources/just_eval_llama2_7b_chat_first20.json").read_text()
    )
    return [r["pure_input"] for r in records[:n]]


def child(args: argparse.Namespace) -> dict:
    import torch

    from tdsdist.analysis.show import position_records
    from tdsdist.engine.decoder import Decoder, Sampling, end_of_answer_ids
    from tdsdist.engine.lockstep import LockstepDecoder, LockstepRequest
    from tdsdist.engine.smollm2 import prepare_smollm2
    from tdsdist.parallel.dist import init_distributed
    from tdsdist.serve.config import ServeConfig, score_config
    from tdsdist.serve.engine import pair_arrays
    from tdsdist.serve.pair import PairInputs

    torch.set_num_threads(args.threads)
    folder = args.model or str(prepare_smollm2())
    config = ServeConfig(aligned=folder, base=folder, base_template="plain", device="cpu")
    scoring = score_config(config)
    device = torch.device("cpu")
    d = init_distributed(1, 600, device)
    inputs = PairInputs.load(scoring)
    if hasattr(inputs, "pair"):  # the resolved pair loads its runners (`jobs.pair`)
        runners = inputs.pair.load(device, d, scoring.head_dtype or "float32")
    else:  # a checkout before it (`--code` compares versions)
        from tdsdist.serve.pair import load_runners

        runners = load_runners(scoring, inputs, device, d)
    end = end_of_answer_ids(runners["aligned"].model, inputs.tokenizer)
    chunk = config.logits_chunk_mib << 20
    prompts = _prompts(max(args.batches))
    contexts = [inputs.contexts([{"role": "user", "content": p}], args.tokens) for p in prompts]
    sampling = Sampling(args.tokens)
    decoder = Decoder(runners["aligned"], inputs.tokenizer, sampling)

    def aligned_only(b: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = decoder.generate([c["aligned"] for c in contexts[:b]], 0)
        return time.perf_counter() - start, sum(len(g.ids) for g in out)

    def lockstep(b: int, timers: dict | None = None) -> tuple[float, int]:
        lock = LockstepDecoder(runners["aligned"], runners["base"], config.top_k, chunk, end)
        if timers is not None:
            _instrument(lock, timers)
        for i in range(b):
            lock.add(LockstepRequest(str(i), contexts[i], args.tokens))
        start, tokens = time.perf_counter(), 0
        while len(lock):
            outputs = lock.step()
            tokens += sum(o.token is not None for o in outputs)
            if timers is not None:  # what the HTTP layer does with each token (serve/app.py)
                start_http = time.perf_counter()
                for o in outputs:
                    if o.token is not None:
                        json.dumps(
                            position_records([o.token], pair_arrays(o.stats), inputs.tokenizer)[0]
                        )
                timers["http_side_per_token_work"] += time.perf_counter() - start_http
        return time.perf_counter() - start, tokens

    aligned_only(1), lockstep(1)  # warm-up
    runs: dict[str, list] = defaultdict(list)
    for r in range(args.inner):
        for b in args.batches:
            pair = [("aligned_only", aligned_only), ("lockstep", lockstep)]
            for name, fn in pair if r % 2 == 0 else pair[::-1]:
                seconds, tokens = fn(b)
                runs[f"{name}_{b}"].append(tokens / seconds)
                runs[f"{name}_{b}_tokens"].append(tokens)
    out: dict = {"tokens_per_s": {k: statistics.median(v) for k, v in runs.items()}}
    out["ratios"] = {
        f"lockstep_over_aligned_only_{b}": out["tokens_per_s"][f"lockstep_{b}"]
        / out["tokens_per_s"][f"aligned_only_{b}"]
        for b in args.batches
    }
    b1, bn = min(args.batches), max(args.batches)
    out["ratios"][f"lockstep_{bn}_over_{b1}"] = (
        out["tokens_per_s"][f"lockstep_{bn}"] / out["tokens_per_s"][f"lockstep_{b1}"]
    )
    if args.profile:
        timers: dict = defaultdict(float)
        seconds, tokens = lockstep(bn, timers)
        timers["step_total"] = seconds
        parts = (
            "http_side_per_token_work",
            "forwards",
            "pair_head",
            "choose_incl_policy_logits",
            "record",
            "cache_merge",
            "cache_select",
        )
        timers["other"] = seconds - sum(timers[k] for k in parts)
        out[f"breakdown_ms_per_token_{bn}"] = {k: 1000 * v / tokens for k, v in timers.items()}
    return out


def _instrument(lock, timers: dict) -> None:
    """Timers around the lockstep decoder's parts (whatever of them this version has)."""
    import tdsdist.engine.lockstep as module

    def wrap(owner, name: str, key: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:
            return

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[key] += time.perf_counter() - start

        setattr(owner, name, timed)

    for runner in lock.runners.values():
        wrap(runner, "hidden_states", "forwards")
        wrap(runner, "logits", "policy_logits")
    wrap(module, "pair_positions", "pair_head")
    wrap(lock.policy, "choose", "choose_incl_policy_logits")
    wrap(lock, "_record", "record")
    for batch in lock._batches.values():
        wrap(batch, "append", "cache_merge")
        wrap(batch, "select", "cache_select")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.lockstep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--code", nargs="+", default=["."], help="checkouts to compare")
    parser.add_argument("--model", help="model folder (default: the demo's SmolLM2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens")
    parser.add_argument("--repeats", type=int, default=3, help="children per checkout")
    parser.add_argument("--inner", type=int, default=1, help="timed passes per child")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="per-step breakdown")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in range(args.repeats):
        for code in args.code if r % 2 == 0 else args.code[::-1]:
            path = str(Path(code).resolve())
            env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--tokens",
                str(args.tokens),
                "--threads",
                str(args.threads),
                "--inner",
                str(args.inner),
                "--batches",
                *map(str, args.batches),
            ]
            if args.model:
                cmd += ["--model", args.model]
            if args.profile and r == 0:
                cmd.append("--profile")
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"child for {path} failed:\n{done.stderr[-3000:]}")
            runs[path].append(json.loads(done.stdout.strip().splitlines()[-1]))
    report: dict = {"threads": args.threads, "tokens": args.tokens, "repeats": args.repeats}
    for path, children in runs.items():
        entry: dict = {}
        for group in ("tokens_per_s", "ratios"):
            entry[group] = {
                k: statistics.median(c[group][k] for c in children) for k in children[0][group]
            }
        entry.update({k: v for k, v in children[0].items() if k.startswith("breakdown")})
        report[path] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
