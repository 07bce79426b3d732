"""One example, position by position: what `tdsdist show` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.analysis.published import NAMES as PUBLISHED
from tdsdist.analysis.published import published_rows
from tdsdist.metrics import CATEGORIES, categories
from tdsdist.store import DIVERGENCES, MODELS, Store
from tdsdist.store.contexts import NOT_RECORDED, StoredContexts, decode_context
from tdsdist.topk_metrics import published_block

#: The arrays the position objects lay out by name (`position_records`), and the one `show` leaves
#: out (the base log-probabilities at the aligned top-k: the API and the store have them; their
#: KL is `kl`). The `published/` metrics come from `published_rows` (computed for stores made
#: before format 3). Every other per-position array a store holds is shown as it is, under its
#: group (`other_columns`): a new array in the schema needs no code here.
LAID_OUT = frozenset(
    {
        *(
            f"{m}/{n}"
            for m in MODELS
            for n in ("top_ids", "top_logprobs", "logprob", "rank", "entropy", "ties")
        ),
        "aligned/logprobs_at_base_top",
        "aligned/rank_of_base_top1",
        "positions/token_id",
        "positions/kl",
        "positions/nudged",
        *(f"positions/{n}" for n in DIVERGENCES),
    }
)
NOT_SHOWN = frozenset({"base/logprobs_at_aligned_top"})


def example_record(store: Store, example_id: str) -> dict[str, Any]:
    """The `show --json` record: per position, both models' statistics, the category, the top-k
    KL, the published top-k metrics (`published`, as `export`'s `published_*` columns) and
    (stores of format 2) the exact divergences and tie counts; for a format-1 store
    (tdsdist 0.1.0) those are null: not measured. Also what the models saw: the `instruction`
    and, per model, the context ids and their text (special tokens kept), null where the store
    did not record them (stores of earlier releases)."""
    index = store.example_index(example_id)
    shown = [n for n in store.columns if n not in NOT_SHOWN and not n.startswith("published/")]
    arrays = store.example(index, shown)
    rows = store.rows(index)
    tokenizer = store.tokenizer()
    token_ids = arrays["positions/token_id"]
    exact = "aligned/ties" in arrays  # the pair head's arrays (format 2)
    published = published_rows(store, rows)  # as `export` reads them (stored in format 3)
    positions = position_records(token_ids.tolist(), arrays, tokenizer, exact, published)
    other_columns(positions, {n: arrays[n] for n in arrays if n not in LAID_OUT})
    return {
        "id": store.ids[index],
        "format_version": store.format_version,
        **inputs_record(store, index, tokenizer),
        "positions": positions,
    }


def other_columns(positions: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    """Each array `group/name` into every position object as it is: under the model's object
    for a model's array, at the top for `positions/...`, under `group` otherwise."""
    for name, values in arrays.items():
        group, _, column = name.partition("/")
        for t, entry in enumerate(positions):
            place = entry if group == "positions" else entry.setdefault(group, {})
            place[column] = values[t].tolist()  # a Python number, or a list ([P, k] arrays)


def published_records(values: dict[str, np.ndarray | None], n: int) -> list[dict[str, Any]]:
    """Per position, AlignTDS's top-k metrics as published and tdsdist's top-1 ones, as `export`
    has them in its `published_*` columns (`published.NAMES`), from `{name: [n] or None}`; null
    where the store lacks an input (the exact aligned rank of the base top 1 before format 2)."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name in PUBLISHED:
        column = values.get(name)
        convert = bool if name == "top1_differs" else int if name.endswith("rank") else float
        for t in range(n):
            out[t][name] = None if column is None else convert(column[t])
    return out


def position_records(
    token_ids: list[int],
    arrays: dict[str, np.ndarray],
    tokenizer: Any,
    exact: bool = True,
    published: dict[str, np.ndarray | None] | None = None,
) -> list[dict[str, Any]]:
    """The `show --json` position objects of one answer from its per-position arrays under the
    store's names (`aligned/rank`, `positions/js`, ...), as a store holds them or the pair head
    gives them (`PairOutput.arrays()` plus `positions/kl`): `show` and `serve` answer with the
    same objects. `exact=False` (a format-1 store): no tie counts nor exact divergences.
    `published`: the published metrics of these positions (`published_rows`), else computed
    from both top-k lists here (`published` of each object). With
    `positions/nudged` (a nudged store) each object says whether the aligned model chose it."""
    cats = categories(np.asarray(arrays["base/rank"]))
    if published is None:
        aligned_ids, aligned_lp, base_ids, base_lp = (
            np.asarray(arrays[f"{m}/{n}"]) for m in MODELS for n in ("top_ids", "top_logprobs")
        )
        pair = arrays.get("aligned/rank_of_base_top1") if exact else None
        published = published_block(
            aligned_ids, aligned_lp, base_ids, base_lp, None if pair is None else np.asarray(pair)
        )
    published_at = published_records(published, len(token_ids))
    positions = []
    for t, token_id in enumerate(token_ids):
        entry: dict[str, Any] = {
            "t": t,
            "token_id": token_id,
            "token": tokenizer.decode([token_id]),
        }
        for model in MODELS:
            entry[model] = {
                "logprob": float(arrays[f"{model}/logprob"][t]),
                "rank": int(arrays[f"{model}/rank"][t]),
                "entropy": float(arrays[f"{model}/entropy"][t]),
                "top_ids": arrays[f"{model}/top_ids"][t].tolist(),
                "top_logprobs": [float(x) for x in arrays[f"{model}/top_logprobs"][t]],
                "ties": int(arrays[f"{model}/ties"][t]) if exact else None,
            }
        if "positions/nudged" in arrays:
            entry["nudged"] = bool(arrays["positions/nudged"][t])
        entry["category"] = CATEGORIES[cats[t]]
        entry["kl"] = float(arrays["positions/kl"][t])
        entry["divergence"] = (
            {n: float(arrays[f"positions/{n}"][t]) for n in DIVERGENCES} if exact else None
        )
        base_top1 = int(arrays["base/top_ids"][t][0])
        differs = base_top1 != int(arrays["aligned/top_ids"][t][0])
        if exact:
            at_base_top = arrays["aligned/logprobs_at_base_top"][t]
            entry["aligned"]["logprobs_at_base_top"] = [float(x) for x in at_base_top]
            entry["base_top1"] = {
                "token_id": base_top1,
                "aligned_rank": int(arrays["aligned/rank_of_base_top1"][t]),
                "aligned_logprob": float(at_base_top[0]),
                "differs_from_aligned_top1": differs,
            }
        else:  # format 1: both top-k lists are there, the aligned view of the base top 1 is not
            entry["base_top1"] = {
                "token_id": base_top1,
                "aligned_rank": None,
                "aligned_logprob": None,
                "differs_from_aligned_top1": differs,
            }
        entry["published"] = published_at[t]
        positions.append(entry)
    return positions


def inputs_record(store: Store, index: int, tokenizer: Any) -> dict[str, Any]:
    """`instruction` (str or None) and `contexts`: per model `{"token_ids", "text"}` or None
    (not recorded)."""
    stored = StoredContexts(store)
    contexts: dict[str, Any] = {}
    for model in MODELS:
        ids = stored.ids(index, model)
        contexts[model] = (
            None
            if ids is None
            else {
                "token_ids": ids.tolist(),
                "text": decode_context(tokenizer, ids),
            }
        )
    return {"instruction": stored.instruction(index), "contexts": contexts}


def _block(title: str, text: str | None) -> list[str]:
    if text is None:
        return [f"{title}: {NOT_RECORDED}"]
    return [f"{title}:", *("  " + line for line in text.split("\n")), ""]  # spaces kept as they are


def render_inputs(record: dict[str, Any]) -> list[str]:
    """The instruction and both contexts, indented, line breaks kept."""
    lines = _block("instruction", record.get("instruction"))
    for model in MODELS:
        c = (record.get("contexts") or {}).get(model)
        title = f"{model} context" + (
            "" if c is None else f" ({len(c['token_ids'])} tokens, special tokens shown)"
        )
        lines += _block(title, None if c is None else c["text"])
    return lines + ([""] if lines[-1] else [])


def render_text(record: dict[str, Any]) -> str:
    lines = [f"example {record['id']}: {len(record['positions'])} positions", ""]
    lines += render_inputs(record)
    exact = bool(record["positions"]) and record["positions"][0]["divergence"] is not None
    lines.append(
        f"{'t':>4}  {'token':<16} {'base rank':>9} {'base lp':>8} {'aligned lp':>10}"
        + (f" {'KL(a||b)':>8} {'JS':>7}" if exact else f" {'kl top-k':>8}")
        + "  category"
    )
    marked = False
    for p in record["positions"]:
        token = repr(p["token"])[1:-1][:16]
        divergence = (
            f" {p['divergence']['kl_aligned_base']:>8.3f} {p['divergence']['js']:>7.4f}"
            if exact
            else f" {p['kl']:>8.3f}"
        )
        differs = bool((p.get("base_top1") or {}).get("differs_from_aligned_top1"))
        marked |= differs
        lines.append(
            f"{p['t']:>4}  {token:<16} {p['base']['rank']:>9} {p['base']['logprob']:>8.3f}"
            f" {p['aligned']['logprob']:>10.3f}{divergence}  "
            + (f"{p['category']:<9} *" if differs else p["category"])
        )
    if marked:
        lines += ["", "* base top-1 differs from aligned top-1"]
    return "\n".join(lines)
