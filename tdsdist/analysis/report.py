"""`tdsdist report`: a static HTML site of a store that works offline, straight from `file://`.

Layout of the site (`out/`):

    index.html, example.html        static pages (copied from `report_assets/`, no data inside)
    assets/base.js, report.js, base.css, report.css
                                    the page code: vanilla JS, no library, no network
    data/index.js                   the summary and one row per example (small: ~150 B/example)
    data/ex-N.js                    example N (store order), loaded only when its page is opened
    figures/<kind>.svg              the figures of `tdsdist figures` (`figures.py`), on the index
    .tdsdist-report                 marker: a later run may replace this folder

Browsers refuse `fetch()` of local files, so data travels as JavaScript: each data file is one call
`tdsReport.index({...})` / `tdsReport.example(N, {...})` of a JSON literal, and `example.html?ex=N`
inserts `<script src="data/ex-N.js">`. The JSON is made inert before it is written: every `<`, `>`,
`&`, U+2028 and U+2029 is written as a `\\uXXXX` escape, so no token can close a script element or
open a comment, and the page code only ever puts data into the DOM as text (`textContent`,
never `innerHTML`). Pages carry a Content-Security-Policy that allows scripts from files only.

An example's data is column-oriented, one entry per answer position: `token` (ids), `cat` (0
unshifted, 1 marginal, 2 shifted, by the base rank and the summary's thresholds), `kl`,
`top1_differs` (the base top 1 is not the aligned top 1), and per model `rank`, `logprob`,
`entropy`, `top_ids` and `top_logprobs_milli` (the first min(10, k) candidates; log-probabilities
in integer thousandths); stores of format 2 add `divergence` (`kl_aligned_base`,
`kl_base_aligned`, `js`, `tv`) and per model `ties`. An example's `stats` (and its index row)
hold the exact mean divergences where the store has them; `kl` of the stats is the top-k + tail
lower bound, `kl` of an index row the exact KL(aligned || base) where there is one (`kl_topk`:
the bound). `text` is the decoded answer and `ends[t]`
where token t ends in it (UTF-16 units, as JavaScript slices strings). `strings` maps every id
used to `tokenizer.decode([id])` (SentencePiece's word-initial space restored). Numbers are
rounded to what the page shows. About 300 bytes per position with k >= 10.

Also per example: `instruction` and `contexts` (per model `{text, n}`, the context the model saw,
decoded with its special tokens; null where the store did not record it), `excluded` (per
position: left out of the summary by the filters, `report_example.py`) and `filters` (null without
filters; also in `data/index.js`). With filters, an example's `stats` count its kept positions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np

from tdsdist.analysis.figures import report_figures
from tdsdist.analysis.report_example import (
    excluded_positions,
    filters_record,
    inputs_for_page,
    special_ids,
)
from tdsdist.analysis.token_text import TokenText, text_ends
from tdsdist.analysis_options import Filters
from tdsdist.files import check_out_folder, publish, staged_folder
from tdsdist.metrics import categories
from tdsdist.store import DIVERGENCES, MODEL_STATS, MODELS, Store
from tdsdist.store.contexts import StoredContexts

MARKER = ".tdsdist-report"
TOP_SHOWN = 10  # candidates shown per model and position (fewer if the store kept fewer)
BLOCK_ROWS = 1 << 16  # rows read from the store at once (several examples per read)
PREVIEW_WORDS, PREVIEW_CHARS = 12, 80
PAGES = ("index.html", "example.html")
ASSETS = ("base.js", "report.js", "base.css", "report.css")  # base.*: shared with `serve`'s page
_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def js_call(function: str, *args: Any) -> str:
    """`tdsReport.<function>(<json>, ...);` with the JSON escaped for any script context.

    The escaped characters can only occur inside JSON strings, where `\\uXXXX` means the same
    character, so the value is unchanged. Non-finite floats are written as the JavaScript
    literals `NaN`, `Infinity`, `-Infinity` (valid in a `.js` file, read back by `json.loads`).
    """
    text = ",".join(
        json.dumps(a, ensure_ascii=False, separators=(",", ":"), allow_nan=True) for a in args
    )
    text = _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)
    return f"tdsReport.{function}({text});\n"


def read_js_call(text: str) -> list[Any]:
    """The arguments of a data file written by `js_call` (for tests and tools)."""
    head, _, rest = text.partition("(")
    if not head.startswith("tdsReport.") or not rest.endswith(");\n"):
        raise ValueError("not a tdsdist report data file")
    args: list[Any] = json.loads("[" + rest[: -len(");\n")] + "]")
    return args


def write_report(
    store: Store, out: Path, summary: dict[str, Any], filters: Filters = Filters()
) -> Path:
    """Write the site of `store` into the folder `out` and return the path of its `index.html`.

    `summary` is `tdsdist.analysis.summary.summarize(store)` (keys missing from it are shown as absent),
    computed with `filters`, whose left-out positions the example pages mark.
    `out` must be new, empty, or an earlier report (it is then replaced). The site is built in a
    temporary sibling folder and moved into place, so an error leaves `out` as it was.
    """
    out = Path(out)
    check_out_folder(out, MARKER, "a tdsdist report")
    with staged_folder(out) as tmp:
        _copy_assets(tmp)
        (tmp / "data").mkdir()
        rows, filtered = _write_examples(store, tmp / "data", summary, filters)
        index = {
            "summary": _plain(summary),
            "examples": rows,
            "store": {
                "name": store.path.name,
                "examples": len(store.ids),
                "top_k": store.top_k,
                "exact_divergences": store.has_pair,
                "shown_top": min(TOP_SHOWN, store.top_k),
                "units": int(store.meta.get("units", 0)),
                "pending_units": int((~store.committed()).sum()),
                "config": _plain(store.meta.get("fingerprint", {})),
            },
            "thresholds": _thresholds(summary),
            "figures": report_figures(tmp, summary) if summary.get("positions") else [],
            "filters": filtered,
        }
        (tmp / "data" / "index.js").write_text(js_call("index", index), encoding="utf-8")
        (tmp / MARKER).write_text(
            "written by `tdsdist report`; the next run replaces this folder\n"
        )
        publish(tmp, out, replace=True)
    return out / "index.html"


def _copy_assets(site: Path) -> None:
    source = resources.files("tdsdist.analysis") / "report_assets"
    for name in PAGES:
        (site / name).write_bytes((source / name).read_bytes())
    (site / "assets").mkdir()
    for name in ASSETS:
        (site / "assets" / name).write_bytes((source / name).read_bytes())


def _thresholds(summary: dict[str, Any]) -> dict[str, int]:
    t = summary.get("thresholds") or {}
    return {
        "unshifted_max": int(t.get("unshifted_max", 1)),
        "marginal_max": int(t.get("marginal_max", 3)),
    }


def _preview(text: str) -> str:
    words = text.split()
    short = " ".join(words[:PREVIEW_WORDS])
    if len(short) > PREVIEW_CHARS:
        short = short[: PREVIEW_CHARS - 1].rstrip()
    return short + ("\u2026" if short != " ".join(words) else "")


def _round(x: np.ndarray, decimals: int = 3) -> list[Any]:
    """Rounded as the page shows them (a log-probability to 0.001: probability to 0.1%)."""
    rounded: list[Any] = np.round(np.asarray(x, dtype=np.float64), decimals).tolist()
    return rounded


def _milli(x: np.ndarray) -> list[Any]:
    """Log-probabilities as integer thousandths (null for -inf, probability 0): exact to the
    0.1% of probability the page shows, and quicker to write and read than floats."""
    x = np.asarray(x, dtype=np.float64)
    milli: list[Any] = np.rint(np.where(np.isfinite(x), x, 0.0) * 1000).astype(np.int64).tolist()
    if np.isfinite(x).all():
        return milli
    finite = np.isfinite(x).tolist()
    return [[v if ok else None for v, ok in zip(r, f)] for r, f in zip(milli, finite)]


def _significant(x: np.ndarray) -> list[float]:
    """Three significant digits (KL spans orders of magnitude; the page shows three)."""
    return [float(f"{v:.3g}") for v in np.asarray(x, dtype=np.float64).tolist()]


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def _blocks(indices: list[int], offsets: np.ndarray, lengths: np.ndarray) -> Iterator[list[int]]:
    """Runs of consecutive examples whose rows fit in `BLOCK_ROWS` (one read each)."""
    run: list[int] = []
    for i in indices:
        if run and (
            i != run[-1] + 1 or int(offsets[i] + lengths[i] - offsets[run[0]]) > BLOCK_ROWS
        ):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


#: What an example page shows of each position: both models' statistics and tie counts, the
#: top-k KL and the exact divergences (the last two kinds where the store holds them).
PAGE_ARRAYS = (
    *(f"{m}/{n}" for m in MODELS for n in (*MODEL_STATS, "ties")),
    "positions/kl",
    *(f"positions/{n}" for n in DIVERGENCES),
)


def _write_examples(
    store: Store, folder: Path, summary: dict[str, Any], filters: Filters
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Write `ex-N.js` for each example of a committed unit; return the rows of the index and
    the filters' record."""
    n_examples = len(store.ids)
    offsets, lengths = store.offsets, store.lengths
    done = store.committed_examples()  # [E]
    scored = [i for i in range(n_examples) if done[i]]
    neighbours = {
        i: (scored[j - 1] if j else None, scored[j + 1] if j + 1 < len(scored) else None)
        for j, i in enumerate(scored)
    }
    thresholds = _thresholds(summary)
    shown = min(TOP_SHOWN, store.top_k)
    flags = _example_flags(store)
    tokenizer = store.tokenizer()
    token_text = TokenText(tokenizer)
    all_tokens = store.read("positions/token_id")
    special = special_ids(store, filters)
    filtered = filters_record(filters, special, tokenizer)
    stored = StoredContexts(store)
    rows: list[dict[str, Any]] = []
    for i in range(n_examples):  # pending examples: their answers are known, their scores not
        if done[i]:
            rows.append({})
            continue
        ids = all_tokens[int(offsets[i]) : int(offsets[i] + lengths[i])].tolist()
        rows.append(_index_row(store, i, tokenizer.decode(ids), None))
    for run in _blocks(scored, offsets, lengths):
        lo = int(offsets[run[0]])
        hi = int(offsets[run[-1]] + lengths[run[-1]])
        names = [n for n in PAGE_ARRAYS if n in store.columns]  # ties, divergences: format 2
        block = store.read_columns(names, slice(lo, hi))
        for name in names:  # the pages show the first `shown` of each top-k list
            if store.columns[name].per_candidate:
                block[name] = block[name][:, :shown]
        block["positions/token_id"] = all_tokens[lo:hi]
        for i in run:
            a, b = int(offsets[i]) - lo, int(offsets[i] + lengths[i]) - lo
            data = {name: values[a:b] for name, values in block.items()}
            excluded = excluded_positions(filters, data["positions/token_id"], special)
            record, row = _example(store, i, data, tokenizer, token_text, thresholds, ~excluded)
            record.update(inputs_for_page(stored, i, tokenizer))
            record["excluded"] = excluded.tolist()
            record["filters"] = filtered
            record["flags"] = flags[i]
            prev, nxt = neighbours[i]
            record["prev"] = None if prev is None else {"i": prev, "id": store.ids[prev]}
            record["next"] = None if nxt is None else {"i": nxt, "id": store.ids[nxt]}
            record["thresholds"] = thresholds
            (folder / f"ex-{i}.js").write_text(js_call("example", i, record), encoding="utf-8")
            rows[i] = row
    return rows, filtered


def _example_flags(store: Store) -> list[dict[str, Any]]:
    group = store.group("examples")
    skip = {"id", "offset", "length", "unit"}
    # cast: zarr types `arr[:]` as array-or-scalar; a whole 1-d array reads as an ndarray
    columns = {name: cast(np.ndarray, arr[:]) for name, arr in group.arrays() if name not in skip}
    return [
        {name: values[i].item() for name, values in sorted(columns.items())}
        for i in range(len(store.ids))
    ]


def _example(
    store: Store,
    i: int,
    data: dict[str, np.ndarray],
    tokenizer: Any,
    token_text: TokenText,
    thresholds: dict[str, int],
    keep: np.ndarray,  # [n] bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's record and the index row; `stats` count the positions in `keep` (`[n]` bool)."""
    ids = data["positions/token_id"].tolist()
    text = tokenizer.decode(ids)
    rank = data["base/rank"]
    cat = categories(rank, thresholds["unshifted_max"], thresholds["marginal_max"])
    kl = data["positions/kl"].astype(np.float64)
    strings = token_text.table(
        np.concatenate(
            [np.asarray(ids, np.int64)]
            + [data[f"{m}/top_ids"].reshape(-1).astype(np.int64) for m in MODELS]
        )
    )
    stats = {
        "shifted": _mean(cat[keep] == 2),
        "marginal": _mean(cat[keep] == 1),
        "unshifted": _mean(cat[keep] == 0),
        "kl": _mean(kl[keep]),
        "base_prob": _mean(np.exp(data["base/logprob"][keep].astype(np.float64))),
    }
    record: dict[str, Any] = {
        "i": i,
        "id": store.ids[i],
        "n": len(ids),
        "stats": stats,
        "text": text,
        "ends": text_ends(tokenizer, ids, text, [strings[str(t)] for t in ids]),
        "strings": strings,
        "token": ids,
        "cat": cat.tolist(),
        "kl": _significant(kl),
    }
    for model in MODELS:
        record[model] = {
            "rank": data[f"{model}/rank"].tolist(),
            "logprob": _round(data[f"{model}/logprob"]),
            "entropy": _round(data[f"{model}/entropy"], 2),
            "top_ids": data[f"{model}/top_ids"].tolist(),
            "top_logprobs_milli": _milli(data[f"{model}/top_logprobs"]),
        }
        if f"{model}/ties" in data:
            record[model]["ties"] = data[f"{model}/ties"].tolist()
    if "positions/js" in data:
        record["divergence"] = {
            n: _significant(data[f"positions/{n}"].astype(np.float64)) for n in DIVERGENCES
        }
        for name in DIVERGENCES:  # the exact means: the page's headline KL
            stats[name] = _mean(data[f"positions/{name}"][keep].astype(np.float64))
    # Where the base model's top 1 is not the aligned model's (AlignTDS marks these positions).
    record["top1_differs"] = (data["base/top_ids"][:, 0] != data["aligned/top_ids"][:, 0]).tolist()
    return record, _index_row(store, i, text, stats)


def _index_row(
    store: Store, i: int, text: str, stats: dict[str, float | None] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "i": i,
        "id": store.ids[i],
        "n": int(store.lengths[i]),
        "text": _preview(text),
        "pending": stats is None,
    }
    if stats is not None:  # `kl`: the exact KL(aligned || base), else the top-k + tail bound
        row.update(shifted=stats["shifted"], kl=stats.get("kl_aligned_base", stats["kl"]))
        row["kl_topk"] = stats["kl"]
    return row


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, anything else unknown to its str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) or not math.isnan(value) else None
    return str(value)
