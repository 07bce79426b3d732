"""One rank of `test_claims.py`'s launch: runs `claim_loop` over 9 units, then a second loop over
5 (as `generate --base` runs the decoding's loop, then the scoring's), and writes what it did."""

from __future__ import annotations

import json
import sys

import torch

from tdsdist.parallel.claims import claim_loop
from tdsdist.parallel.dist import destroy, init_distributed


def main(out: str, tp: int) -> None:
    d = init_distributed(tp, 60, torch.device("cpu"))
    worked, committed = [], []

    def work(unit: int, advance) -> int:
        worked.append(unit)
        return unit * unit

    def commit(unit: int, result: int) -> None:
        committed.append([unit, result])

    loop = claim_loop(d, list(range(9)), work, commit, size=lambda u: u + 1)
    record = {"rank": d.rank, "worked": worked, "committed": committed, "done": loop.done}
    second: list[int] = []
    again = claim_loop(
        d, list(range(5)), lambda u, advance: u, lambda u, r: second.append(u), size=lambda u: 1
    )
    record.update(second=second, second_done=again.done)
    with open(f"{out}.{d.rank}.json", "w", encoding="utf-8") as f:
        json.dump(record, f)
    destroy(d)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
