"""One example, position by position: what `tdsdist show` prints."""

from __future__ import annotations

from typing import Any

from tdsdist.errors import TdsError
from tdsdist.metrics import CATEGORIES, categories
from tdsdist.store import MODELS, Store


def example_record(store: Store, example_id: str) -> dict[str, Any]:
    """The `show --json` record: per position, both models' statistics, the category and KL."""
    index = store.example_index(example_id)
    if not store.example_unit_committed(index):
        raise TdsError(
            f"{store.path}: example {example_id!r} is not scored yet (its unit is pending)"
        )
    rows = store.rows(index)
    tokenizer = store.tokenizer()
    token_ids = store.read("positions/token_id", rows)
    kl = store.read("positions/kl", rows)
    stats = {
        model: {
            name: store.read(f"{model}/{name}", rows)
            for name in ("logprob", "rank", "top_ids", "top_logprobs")
        }
        for model in MODELS
    }
    cats = categories(stats["base"]["rank"])
    positions = []
    for t, token_id in enumerate(token_ids.tolist()):
        entry: dict[str, Any] = {
            "t": t,
            "token_id": token_id,
            "token": tokenizer.decode([token_id]),
        }
        for model in MODELS:
            s = stats[model]
            entry[model] = {
                "logprob": float(s["logprob"][t]),
                "rank": int(s["rank"][t]),
                "top_ids": s["top_ids"][t].tolist(),
                "top_logprobs": [float(x) for x in s["top_logprobs"][t]],
            }
        entry["category"] = CATEGORIES[cats[t]]
        entry["kl"] = float(kl[t])
        positions.append(entry)
    return {"id": store.ids[index], "positions": positions}


def render_text(record: dict[str, Any]) -> str:
    lines = [f"example {record['id']}: {len(record['positions'])} positions", ""]
    lines.append(
        f"{'t':>4}  {'token':<16} {'base rank':>9} {'base lp':>8} {'aligned lp':>10} {'kl':>7}  category"
    )
    for p in record["positions"]:
        token = repr(p["token"])[1:-1][:16]
        lines.append(
            f"{p['t']:>4}  {token:<16} {p['base']['rank']:>9} {p['base']['logprob']:>8.3f}"
            f" {p['aligned']['logprob']:>10.3f} {p['kl']:>7.3f}  {p['category']}"
        )
    return "\n".join(lines)
