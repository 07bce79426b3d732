"""What the tools share: paths, command-line plumbing, random-weight model shapes, the bare
teacher-forced forward that tdsdist's Scorer is compared with, and /proc memory readings.

Not a tool itself; every tool imports it as `tools.common` (run them from the repository root as
`python -m tools.bench.speed ...`). torch and transformers are imported where they are used, so
that `--help` and the parent processes of the memory benchmarks stay light.
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tdsdist.engine.runner import ModelRunner
    from tdsdist.engine.scorer import ContextAnswer

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"  # the project's data, next to the checkout
JUST_EVAL = SHARED_DATA / "just_eval_llama2_7b_chat.json"
JUST_EVAL_FIRST20 = ROOT / "tdsdist" / "resources" / "just_eval_llama2_7b_chat_first20.json"

#: Shapes of the random-weight Llama bodies the tools build on the device (no weights to carry);
#: `tiny` is for smoke runs of the same code on the CPU.
SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    ),
}


def arg_parser(description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser that prints `description` (a module docstring, or its first paragraph) as written,
    its usage line naming the command that runs the tool (`python -m tools.bench.speed`)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return argparse.ArgumentParser(
        prog=f"python -m {spec.name}" if spec is not None else None,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data`: the just-eval answers file; see `just_eval_data` for the default."""
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"just-eval file (default {JUST_EVAL}, else {JUST_EVAL_FIRST20.relative_to(ROOT)})",
    )


def just_eval_data(path: Path | None) -> Path:
    """`path`, else the shared just-eval file, else the first 20 examples shipped with tdsdist."""
    return path or (JUST_EVAL if JUST_EVAL.exists() else JUST_EVAL_FIRST20)


def random_llama(shape: str, vocab: int, dtype: torch.dtype, device: torch.device):
    """A random-weight `LlamaForCausalLM` of `SHAPES[shape]` built on `device` (seed 0), eval."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(runner: ModelRunner, seqs: Sequence[ContextAnswer], max_tokens: int) -> int:
    """The model's own teacher-forced forward on the Scorer's batches, without its statistics.

    Each body forward (`answer_hidden_states`: right-padded and attended as `Scorer.score` does,
    causal-only attention included), then the output projection (`runner.logits`) of the answer
    rows only. Batched by `token_budget_batches` exactly as the Scorer batches; no prefix cache.
    Returns the rows projected (the answer positions).
    """
    import torch

    from tdsdist.engine.scorer import answer_hidden_states, token_budget_batches

    fed = [len(s.context) + len(s.answer) - 1 for s in seqs]
    projected = 0
    with torch.inference_mode():
        for batch in token_budget_batches(fed, max_tokens):
            answer_hidden = answer_hidden_states(runner, [seqs[i] for i in batch])  # [N, H]
            projected += runner.logits(answer_hidden).shape[0]
    return projected


def agreement(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    """How closely two `Scorer.score` outputs over the same positions agree (`ref` the standard).

    Where the top-k ids differ, `closest_gap_where_order_differs` is the largest, over those
    positions, of the smallest gap between neighbouring reference top-k log-probabilities: ties
    (a small gap) explain a swapped order, a large one does not.
    """
    import numpy as np

    same_ids = (got["top_ids"] == ref["top_ids"]).all(-1)
    gaps = [float(np.abs(np.diff(ref["top_logprobs"][i])).min()) for i in np.flatnonzero(~same_ids)]
    return {
        "top_ids_identical": float(same_ids.mean()),
        "ranks_identical": float((got["rank"] == ref["rank"]).mean()),
        "closest_gap_where_order_differs": max(gaps, default=None),
        "max_abs_logprob_diff": float(np.abs(got["logprob"] - ref["logprob"]).max()),
        "max_abs_top_logprob_diff": float(np.abs(got["top_logprobs"] - ref["top_logprobs"]).max()),
    }


def print_report(report: dict, out: Path | None) -> None:
    """Print a tool's JSON report, and write it to `out` too when given (`--out`)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def proc_status_kib(field: str) -> int:
    """A kB field of `/proc/self/status` (`VmRSS`, `RssAnon`, ...); 0 if the kernel has none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident set size so far (`ru_maxrss`, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_flags(args: argparse.Namespace, *names: str) -> list[str]:
    """`--name value` for each of `names` (attributes of the parent's parsed `args`,
    underscores as dashes), to hand the parent's options on to a measuring child."""
    return [x for name in names for x in ("--" + name.replace("_", "-"), str(getattr(args, name)))]


def child_json(cmd: Sequence[str], **kwargs) -> dict:
    """Run a measuring child process (a fresh interpreter: its own peak RSS, no warm caches) and
    return the JSON object it printed last; its stderr tail in the error if it failed."""
    import subprocess

    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
