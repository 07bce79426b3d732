"""What the head's precision does to a bfloat16 run: time, tie rate and the category shift.

A bfloat16 model's logits out of a bfloat16 projection carry 8 bits of mantissa, so answer tokens
tie other tokens often and ranks (hence categories) move toward "unshifted". This runs the real
scoring job (`tdsdist.jobs.score.run_score`) on SmolLM2-135M-Instruct, the demo's context-shift
pair (chat vs plain), the first N just-eval answers, three ways:

    float32                          the reference
    bfloat16, --head-dtype model     bfloat16 projection (tdsdist 0.1.0)
    bfloat16, --head-dtype float32   bfloat16 body, float32 projection of the answer rows

and reports per run the scoring time, the share of positions whose answer token ties another
logit (base model), the category fractions, and the share of positions whose category differs
from the float32 run.

    python -m tools.bench.head_dtype --examples 40 [--out head_dtype.json]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tools.common import add_data_argument, arg_parser, just_eval_data, print_report

RUNS = (("float32", "float32"), ("bfloat16", "model"), ("bfloat16", "float32"))


def main(argv=None) -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--max-output-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    add_data_argument(parser)
    args = parser.parse_args(argv)

    import torch

    from tdsdist.config import build_config
    from tdsdist.engine.smollm2 import prepare_smollm2
    from tdsdist.jobs.score import run_score
    from tdsdist.metrics import categories
    from tdsdist.store import Store

    torch.set_num_threads(args.threads)
    model = str(prepare_smollm2())
    results, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, head in RUNS:
            store = Path(tmp) / f"{dtype}-{head}.zarr"
            flags = dict(
                aligned=model,
                base=model,
                data=str(just_eval_data(args.data)),
                store=str(store),
                aligned_template="chat",
                limit=args.examples,
                dtype=dtype,
                head_dtype=head,
                max_output_tokens=args.max_output_tokens,
                device="cpu",
            )
            timing = run_score(
                build_config({}, flags), log=lambda m: print("#", m, file=sys.stderr)
            )
            s = Store(store, mode="r")
            rows = s.valid_rows()
            cats = categories(s.read("base/rank")[rows])
            if reference is None:
                reference = cats
            results.append(
                {
                    "dtype": dtype,
                    "head_dtype": head,
                    "positions": int(rows.sum()),
                    "score_seconds": timing["score_seconds"],
                    "tied_base": float((s.read("base/ties")[rows] > 0).mean()),
                    "tied_aligned": float((s.read("aligned/ties")[rows] > 0).mean()),
                    "fractions": {
                        name: float((cats == i).mean())
                        for i, name in enumerate(("unshifted", "marginal", "shifted"))
                    },
                    "category_differs_from_float32": float((cats != reference).mean()),
                }
            )
    print(
        "| dtype | head | positions | score s | base ties | unshifted | marginal | shifted | category != float32 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = r["fractions"]
        print(
            f"| {r['dtype']} | {r['head_dtype']} | {r['positions']} | {r['score_seconds']:.1f} |"
            f" {100 * r['tied_base']:.2f}% | {100 * f['unshifted']:.2f}% | {100 * f['marginal']:.2f}% |"
            f" {100 * f['shifted']:.2f}% | {100 * r['category_differs_from_float32']:.2f}% |"
        )
    print_report({"examples": args.examples, "runs": results, "threads": args.threads}, args.out)


if __name__ == "__main__":
    main()
