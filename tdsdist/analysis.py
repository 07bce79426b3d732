"""Summary statistics of a store, streamed over chunks of positions with numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.metrics import CATEGORIES, categories
from tdsdist.store import Store


def summarize(store: Store, marginal_max: int = 3) -> dict[str, Any]:
    """Category counts and fractions over the committed units' positions.

    Reads unit by unit (each unit's rows are contiguous), so memory is bounded by one unit.
    """
    counts = np.zeros(len(CATEGORIES), dtype=np.int64)
    examples = 0
    done = store.committed()
    rank = store.root["base/rank"]
    for unit in store.units():
        if not done[unit.index]:
            continue
        examples += len(unit.examples)
        ranks = rank[unit.start : unit.start + unit.positions]
        counts += np.bincount(categories(ranks, marginal_max), minlength=len(CATEGORIES))
    positions = int(counts.sum())
    return {
        "examples": examples,
        "positions": positions,
        "pending_units": int((~done).sum()),
        "categories": {
            name: {"count": int(c), "fraction": (float(c) / positions) if positions else 0.0}
            for name, c in zip(CATEGORIES, counts)
        },
    }


def render_text(summary: dict[str, Any]) -> str:
    lines = [f"{summary['examples']} examples, {summary['positions']} positions"]
    if summary["pending_units"]:
        lines.append(f"({summary['pending_units']} units still pending: not counted)")
    for name, c in summary["categories"].items():
        lines.append(f"  {name:<10} {c['count']:>10}  {100 * c['fraction']:6.2f}%")
    return "\n".join(lines)
