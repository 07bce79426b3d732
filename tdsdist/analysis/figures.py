"""Publication figures of one or more stores, drawn from their summaries (`summary.summarize`).

Each figure is one kind of statistic with every store overlaid (one Okabe-Ito colour per store,
safe for the common colour-vision deficiencies), sized for one column of a two-column paper
(`COLUMN_WIDTH_IN`) with fonts that stay readable there, and written as PNG (`DPI`, matplotlib's
Agg renderer) and SVG (optionally PDF). Figures are made without pyplot, so no global figure
state and no interactive backend are involved (a notebook's backend is left alone). A footnote line on each figure says what was filtered and how the intervals
were computed, so a figure cut out of its context still says what it counts.

    categories              unshifted / marginal / shifted fractions, 95% intervals (Re-Align)
    shift_by_position       shifted fraction at token position t, interval band (Re-Align:
                            "TDS diminishes over time")
    divergence_by_position  mean KL(aligned || base) at t, interval band (Qi et al.: "a few
                            tokens deep"); the pair head's exact KL, else the top-k lower bound
    divergences_by_position all four exact divergences at t (two panels: the KLs both ways in
                            nats; JS and TV, bounded), interval bands (Meng et al.: JS by
                            position); stores without the pair head's divergences: left out
    branching_by_position   each model's branching factor exp(mean entropy) at t, log scale,
                            interval bands (Yang & Holtzman: "alignment shrinks the horizon")
    base_top1_by_position   the base model's probability of its own top 1 at t, interval band
                            (the confidence that Fei et al.'s nudging thresholds)
    rank_histogram          base rank of the answer token, binned
    top_shifted_tokens      the tokens most often shifted, one panel per store
    nudged_by_position      nudged stores (`tdsdist nudge`): the fraction of tokens the aligned
                            model chose at t, interval band (Fei et al.'s nudging)
    top_nudged_tokens       nudged stores: the tokens the aligned model chose most often

Only the summaries are read (no store), so `tdsdist report` draws the same figures from the
summary it already has; keys a summary lacks leave their figure out instead of failing.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tdsdist.analysis.figure_style import (  # noqa: F401  (re-exported: the figures' look)
    CATEGORY_NAMES,
    COLUMN_WIDTH_IN,
    DPI,
    FONT_PT,
    FOOTNOTE_CHARS,
    FOOTNOTE_PT,
    HEIGHT_IN,
    KINDS,
    NUDGE_KINDS,
    OKABE_ITO,
    RC,
    TOKEN_CHARS,
    TOKENS_SHOWN,
    finite,
    shifted_tokens,
    visible_token,
)
from tdsdist.inputs.fingerprint import aligned_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pair_label(summary: dict[str, Any]) -> str:
    """`aligned vs base` with each model's short name (the last part of a path or hub id)."""
    config = summary.get("config") or {}
    names = [_short(aligned_name(config)), _short(config.get("base"))]
    if all(names):
        return f"{names[0]} vs {names[1]}"
    return _short(summary.get("store")) or "store"


def _short(name: Any) -> str:
    """The last part of each path or hub id (`BASE + ADAPTER` keeps both parts)."""
    if not name:
        return ""
    return " + ".join(PurePosixPath(p.strip().rstrip("/")).name for p in str(name).split(" + "))


def store_labels(summaries: list[dict[str, Any]]) -> list[str]:
    """One legend label per store: the pair, then its templates, then its folder where needed to
    tell two stores apart (the same pair scored plain and with URIAL, say)."""
    groups = [s.get("group") for s in summaries]
    if any(g is not None for g in groups):  # --group-by: a line per group of each store
        paths = list(dict.fromkeys(str(s.get("store")) for s in summaries))
        if len(paths) == 1:
            return [str(g) for g in groups]
        first = {str(s.get("store")): s for s in reversed(summaries)}
        names = dict(zip(paths, store_labels([{**first[p], "group": None} for p in paths])))
        return [f"{names[str(s.get('store'))]}: {g}" for s, g in zip(summaries, groups)]
    labels = [pair_label(s) for s in summaries]
    for extra in (_templates, lambda s: _short(s.get("store")), lambda s: str(s.get("store"))):
        parts = [extra(s) for s in summaries]
        for label in {x for x in labels if labels.count(x) > 1}:
            group = [i for i, x in enumerate(labels) if x == label]
            if len({parts[i] for i in group}) > 1:  # this part tells them apart: add it
                for i in group:
                    labels[i] = f"{label} ({parts[i]})" if parts[i] else label
    return labels


def _templates(summary: dict[str, Any]) -> str:
    config = summary.get("config") or {}
    a, b = config.get("aligned_template"), config.get("base_template")
    return f"{a or '-'}/{b or '-'}" if a or b else ""


def footnote(summary: dict[str, Any]) -> str:
    """What the figure counts: the filters and the intervals' method (from the summary)."""
    excluded = summary.get("excluded") or {}
    parts = []
    if excluded.get("first"):
        n = int(excluded["first"])
        parts.append(
            f"the first {n} positions of each answer" if n > 1 else "each answer's first position"
        )
    if excluded.get("special_token_ids"):
        parts.append("special tokens (EOS among them)")
    text = "Left out: " + "; ".join(parts) + "." if parts else "No positions filtered."
    intervals = summary.get("intervals") or {}
    if intervals.get("resamples"):
        text += f" 95% intervals: bootstrap over examples, {intervals['resamples']} resamples."
    return text


def write_figures(
    summaries: list[dict[str, Any]], folder: Path, formats: tuple[str, ...] = ("png", "svg")
) -> list[dict[str, Any]]:
    """Draw every kind the summaries support into `folder`; one index entry per figure.

    Stores without positions are left out of the figures (their summaries hold no curve);
    when none has any, nothing is drawn and the list is empty.
    """
    import matplotlib

    from tdsdist.analysis import figure_kinds

    labels = store_labels(summaries)
    kept = [
        (s, lab, OKABE_ITO[i % len(OKABE_ITO)])
        for i, (s, lab) in enumerate(zip(summaries, labels))
        if s.get("positions")
    ]
    if not kept:
        return []
    note = footnote(kept[0][0])
    entries = []
    with matplotlib.rc_context(RC), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        for kind in KINDS + NUDGE_KINDS:
            drawn = getattr(figure_kinds, kind)(kept)
            if drawn is None:
                continue
            fig, title, shows = drawn
            _add_footnote(fig, note)
            files = []
            for fmt in formats:
                name = f"{kind}.{fmt}"
                fig.savefig(folder / name, dpi=DPI, metadata=_metadata(fmt))
                files.append(name)
            width, height = (int(round(x * DPI)) for x in fig.get_size_inches())
            entries.append(
                {
                    "kind": kind,
                    "title": title,
                    "shows": shows,
                    "files": files,
                    "width_px": width,
                    "height_px": height,
                    "footnote": note,
                }
            )
    return entries


def _add_footnote(fig: Figure, note: str) -> None:
    """The footnote under the axes, in space the layout leaves free for it."""
    lines = textwrap.wrap(note, FOOTNOTE_CHARS)
    height = fig.get_size_inches()[1]
    margin = (FOOTNOTE_PT * (1.25 * len(lines) + 1.0) / 72) / height
    # The figures use layout="constrained": its engine's `set` takes `rect` (the base type's not).
    fig.get_layout_engine().set(rect=(0, margin, 1, 1 - margin))  # type: ignore[union-attr,call-arg]
    text = "\n".join(lines)
    fig.text(0.01, 0.012, text, fontsize=FOOTNOTE_PT, color="#444444", ha="left", va="bottom")


def _metadata(fmt: str) -> dict[str, Any]:
    """No timestamps: the same summaries give the same files."""
    none = {"svg": ("Date", "Creator", "Format", "Type"), "pdf": ("CreationDate",)}
    return dict.fromkeys(none.get(fmt, ()))  # all None: no <metadata> block in the SVG


MARKER = ".tdsdist-figures"
INDEX = "figures.json"


def write_figure_folder(
    summaries: list[dict[str, Any]],
    out: Path,
    options: dict[str, Any],
    formats: tuple[str, ...] = ("png", "svg"),
) -> dict[str, Any]:
    """`tdsdist figures`: every figure and `figures.json` into the folder `out`, built beside it
    and moved into place (an error leaves `out` as it was). `out` must be new, empty, or an
    earlier figures folder (replaced). A store with no position to draw is an error, never a
    figure that silently lacks it."""
    import json

    import tdsdist
    from tdsdist.errors import TdsError
    from tdsdist.files import check_out_folder, publish, staged_folder

    out = Path(out)
    check_out_folder(out, MARKER, "a tdsdist figures folder")
    for s in summaries:
        if not s.get("positions"):
            excluded = (s.get("excluded") or {}).get("positions", 0)
            raise TdsError(
                f"{s.get('store')}: no positions to draw ({excluded} left out by the filters,"
                f" {s.get('pending_units', 0)} units pending)"
            )
    with staged_folder(out) as tmp:
        entries = write_figures(summaries, tmp, formats)
        index = {
            "written_by": f"tdsdist {tdsdist.__version__} figures",
            "stores": [str(s.get("store")) for s in summaries],
            "labels": store_labels(summaries),
            "options": options,
            "dpi": DPI,
            "figures": entries,
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
        (tmp / MARKER).write_text(
            "written by `tdsdist figures`; the next run replaces this folder\n"
        )
        publish(tmp, out, replace=True)
    return index


def report_figures(site: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of `tdsdist report`'s index page: SVG files under `site/figures/`, drawn from
    the report's own summary; entries for `data/index.js` (`src` relative to the site).

    The site's copies carry no URL-like string but the SVG namespace name (no DOCTYPE, `href`
    instead of the older `xlink:href`), as every file of the site (see `report.py`)."""
    folder = site / "figures"
    folder.mkdir()
    entries = write_figures([summary], folder, formats=("svg",))
    for e in entries:
        path = folder / e["files"][0]
        path.write_text(site_svg(path.read_text(encoding="utf-8")), encoding="utf-8")
    keep = ("kind", "title", "shows", "footnote", "width_px", "height_px")
    return [{"src": f"figures/{e['files'][0]}", **{k: e[k] for k in keep}} for e in entries]


def site_svg(text: str) -> str:
    """Matplotlib's SVG without its DOCTYPE (a DTD address) and with SVG 2's `href`."""
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, count=1)
    text = text.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    return text.replace("xlink:href=", "href=")
