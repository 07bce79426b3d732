"""One benchmark on two versions of tdsdist, alternately, in one run: is a change within noise?

A refactor must leave speed unchanged; on a shared machine only a side-by-side measurement can
say so. This runs the benchmark module given after `--` (any tool with `--out FILE` writing its
JSON report) `--rounds` times on each version, alternating (before, after, after, before, ...),
each run a fresh interpreter. The benchmark's own code is this checkout's `tools/` for both, so
only the `tdsdist` package differs: the "before" runs import it from `--before`, a folder made
by

    git archive 63319cb tdsdist | tar -x -C /tmp/tdsdist-before

`--metric` names the figure to compare as dotted keys into the report (`ms_per_position.pair`;
a list there counts as that run's repeats, and its median is the run's value). Prints each run's
value, the medians, and the ratio after/before of the medians (and its range over pairs).

    python -m tools.bench.before_after --before /tmp/tdsdist-before --rounds 3 \\
        --metric ms_per_position.pair -- tools.bench.pair --examples 8 --repeats 1
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.common import ROOT, arg_parser, print_report


def metric(report: Any, keys: str) -> float:
    """The value at dotted `keys` (list indices as numbers); a list gives its median."""
    value = report
    for key in keys.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return float(statistics.median(value) if isinstance(value, list) else value)


def run_once(module: str, args: list[str], package_root: Path, out: Path) -> dict:
    """One fresh interpreter running `python -m module args --out out`, importing tdsdist from
    `package_root` (and `tools` from this checkout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package_root), str(ROOT)]))
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=package_root)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report: dict = json.loads(out.read_text())
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = arg_parser(__doc__)
    parser.add_argument(
        "--before", type=Path, required=True, help="folder holding the old tdsdist/"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metric", required=True, help="dotted keys into the report")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv[:split])
    bench = argv[split + 1 :]
    if not bench:
        parser.error("give the benchmark after `--`: -- tools.bench.pair --examples 8")
    if not (args.before / "tdsdist" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no tdsdist/ package there")

    values: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        # The "before" root holds only the old package: `tools` comes from PYTHONPATH (this tree).
        before_root = Path(tmp) / "before"
        shutil.copytree(args.before / "tdsdist", before_root / "tdsdist")
        roots = {"before": before_root, "after": ROOT}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                report = run_once(bench[0], bench[1:], roots[name], Path(tmp) / "out.json")
                values[name].append(metric(report, args.metric))
                print(f"# round {r} {name}: {values[name][-1]:.4g}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in values.items()}
    pairs = [a / b for a, b in zip(values["after"], values["before"])]
    print(f"| version | {args.metric} (median) | runs |")
    print("|---|---:|---|")
    for k, v in values.items():
        print(f"| {k} | {med[k]:.4g} | {', '.join(f'{x:.4g}' for x in v)} |")
    print(
        f"after / before = {med['after'] / med['before']:.3f} "
        f"(per round {min(pairs):.3f} to {max(pairs):.3f})"
    )
    report = {"benchmark": bench, "metric": args.metric, "values": values, "medians": med}
    report["ratio"] = med["after"] / med["before"]
    print_report(report, args.out)


if __name__ == "__main__":
    main()
