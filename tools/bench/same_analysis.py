"""`analyze --json` of this code against an earlier commit's, byte for byte, on stores.

A speed change to the analysis must not move a number: this runs `tdsdist analyze STORE --json`
with both packages (each in a fresh process) on every fixture store of `tests/fixtures` (or the
stores given) under a few option sets, and lists any store and options whose output differs.
Exit status 1 when one does.

    git archive main tdsdist | tar -x -C /tmp/tdsdist-before
    python -m tools.bench.same_analysis --before /tmp/tdsdist-before
    python -m tools.bench.same_analysis --before /tmp/tdsdist-before --stores /tmp/big.zarr
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.common import ROOT, arg_parser

OPTIONS = [
    [],
    ["--exclude-first", "2", "--exclude-special-tokens"],
    ["--category-by", "aligned-top1", "--marginal-max", "3"],
    ["--no-published", "--max-t", "5", "--resamples", "50"],
]

CHILD = """
import sys
package = sys.argv.pop(1)
if package:
    sys.path.insert(0, package)  # before the working directory: that package, not this one
from tdsdist.cli import entry
sys.argv[0] = "tdsdist"
entry()
"""


def analyze(store: Path, options: list[str], package: Path | None) -> str:
    """The JSON (or the error) `analyze` prints, with the package's folder taken out."""
    cmd = [sys.executable, "-c", CHILD, str(package or ""), "analyze", str(store), *options]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=ROOT)
    out = done.stdout + done.stderr
    return out.replace(str(package), "") if package else out


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--before", type=Path, required=True, help="An earlier tdsdist package.")
    parser.add_argument("--stores", type=Path, nargs="*", default=None)
    args = parser.parse_args()
    stores = args.stores or sorted((ROOT / "tests" / "fixtures").glob("*/*.zarr"))
    differ = 0
    for store in stores:
        for options in OPTIONS:
            before, after = analyze(store, options, args.before), analyze(store, options, None)
            same = before == after and after.lstrip().startswith("{")
            differ += not same
            label = "same" if same else "DIFFERENT (or not JSON)"
            print(f"{label}: {store} {' '.join(options)} ({len(after):,} bytes)")
    print(f"{differ} of {len(stores) * len(OPTIONS)} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
