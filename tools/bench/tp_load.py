"""Peak host memory per rank when loading a model for tensor parallelism: whole, then split
(`tdsdist.parallel.tp.shard_for_tp`), against shard by shard
(`tdsdist.parallel.tp_load.load_sharded_for_tp`).

Saves a random Llama (about 0.5 GB in float32 by default) as safetensors files of
`--shard-mib`, then for each mode starts `--tp` fresh ranks on this machine (torchrun, gloo) that
load it and report the private memory (anonymous RSS, sampled) that loading added at its peak and
after, and their peak RSS. Also checks that both modes give the same final hidden states.

    python -m tools.bench.tp_load --tp 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.common import ROOT, arg_parser, peak_rss_kib, proc_status_kib


class AnonSampler:
    """Peak private (anonymous) resident memory, sampled every 5 ms on a thread.

    Why not `ru_maxrss`: it counts file-backed pages too, and DeepSpeed keeps the safetensors
    files mapped while it reads them; those pages are the page cache, shared by every rank on the
    node and dropped under pressure, so they are not what runs a node out of memory.
    """

    def __init__(self) -> None:
        import threading

        self.start_kib = proc_status_kib("RssAnon")
        self.peak_kib = self.start_kib
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.005):
            self.peak_kib = max(self.peak_kib, proc_status_kib("RssAnon"))

    def stop(self) -> tuple[int, int]:
        self.done.set()
        self.thread.join()
        return max(self.peak_kib, proc_status_kib("RssAnon")), self.start_kib


def worker(folder: str, mode: str, out: str, dtype: str) -> None:
    import torch
    import torch.distributed as dist

    from tdsdist.engine.models import DTYPE, load_model
    from tdsdist.parallel.tp import shard_for_tp
    from tdsdist.parallel.tp_load import load_sharded_for_tp

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, tp = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(tp)))
    import deepspeed  # noqa: F401  (its import cost is not the model's)

    sampler = AnonSampler()
    before = peak_rss_kib()
    cpu = torch.device("cpu")
    vocab = 32000
    if mode == "whole":
        model = load_model(folder, dtype, cpu)
        model, *_ = shard_for_tp(model, vocab, group, tp, rank, cpu)
    else:
        model, *_ = load_sharded_for_tp(folder, DTYPE[dtype], vocab, group, tp, rank, cpu)
    peak = peak_rss_kib()
    anon_peak, anon_start = sampler.stop()
    with torch.no_grad():
        ids = torch.arange(3, 40).unsqueeze(0)
        hidden = model.base_model(input_ids=ids).last_hidden_state
    if rank == 0:
        torch.save(hidden, out + ".pt")
        facts = {
            "before_kib": before,
            "peak_kib": peak,
            "anon_start_kib": anon_start,
            "anon_peak_kib": anon_peak,
            "anon_end_kib": proc_status_kib("RssAnon"),
        }
        Path(out).write_text(json.dumps(facts))
    dist.destroy_process_group()


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=64)
    parser.add_argument("--dtype", default="float32", help="load as (the files hold float32)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=args.hidden,
            intermediate_size=int(2.6875 * args.hidden),
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 128,
            num_key_value_heads=args.hidden // 128,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(folder, max_shard_size=f"{args.shard_mib}MB")
        del model
        files = sorted(folder.glob("*.safetensors"))
        largest = max(f.stat().st_size for f in files)
        results, hidden = {}, {}
        for mode in ("whole", "sharded"):
            out = str(Path(tmp) / f"{mode}.json")
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={args.tp}",
                "--module",
                "tools.bench.tp_load",
                "--worker",
                str(folder),
                mode,
                out,
                args.dtype,
            ]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
            subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=1200, cwd=ROOT)
            results[mode] = json.loads(Path(out).read_text())
            hidden[mode] = torch.load(out + ".pt", weights_only=True)
        same = bool(torch.equal(hidden["whole"], hidden["sharded"]))
    print(
        f"model {size / 2**20:,.0f} MiB (float32) in {len(files)} files, largest"
        f" {largest / 2**20:,.0f} MiB; loaded as {args.dtype}; tp={args.tp}; final hidden states identical: {same}\n"
    )
    print("Rank 0, MiB. Private: anonymous resident memory grown while loading (peak, and what")
    print(
        "stays: the rank's share); RSS: peak resident set incl. file pages of the mapped files.\n"
    )
    print("| loading | private peak | private peak / model | private after | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        grown = (r["anon_peak_kib"] - r["anon_start_kib"]) / 1024
        kept = (r["anon_end_kib"] - r["anon_start_kib"]) / 1024
        print(
            f"| {mode} | {grown:,.0f} | {grown * 2**20 / size:.2f}x | {kept:,.0f} |"
            f" {r['peak_kib'] / 1024:,.0f} |"
        )


if __name__ == "__main__":
    main()
