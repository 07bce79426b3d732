"""One function per figure kind of `figures.py`: `(summary, label, colour)` per store in, a
matplotlib figure with its title and one sentence of what it shows out (None: nothing to draw).

Percentages are drawn as 0-100 (axis labels say "%"); intervals are the summary's 95% bootstrap
intervals over examples, drawn as error bars or bands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tdsdist.analysis.figure_style import (
    CATEGORY_NAMES,
    COLUMN_WIDTH_IN,
    HEIGHT_IN,
    TOKENS_SHOWN,
    finite,
    shifted_tokens,
    visible_token,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Stores = list[tuple[dict[str, Any], str, str]]
Drawn = tuple[Any, str, str] | None
#: The y range of a percentage against t: a line at 0% or 100% is drawn whole, not cut by the
#: frame.
_PERCENT = (-1.5, 101.5)


def _figure(height: float = HEIGHT_IN, rows: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure of its own, without pyplot: no global state, no interactive backend touched
    (a notebook's backend stays as it was); `savefig` picks the writer by the file's format."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(COLUMN_WIDTH_IN, height), layout="constrained")
    return fig, fig.subplots(rows, 1, **kwargs)


def _legend(ax: Axes, stores: Stores) -> None:
    """Above the axes, outside them (inside, it would hide bars or bands); drawn for one store
    too, since it names the pair. One column: long pair names fit a paper's column."""
    ax.figure.legend(loc="outside upper center", ncols=1, frameon=False)


def _ci(entry: dict[str, Any] | None, scale: float = 1.0) -> tuple[float, float, float]:
    """(value, low, high) of a summary entry `{"fraction"|"mean": x, "ci": [lo, hi]}`."""
    entry = entry or {}
    value = entry.get("fraction", entry.get("mean"))
    low, high = (entry.get("ci") or [None, None])[:2]
    return finite(value) * scale, finite(low) * scale, finite(high) * scale


def _grouped_bars(ax: Axes, stores: Stores, values: list[list[tuple[float, float, float]]]) -> None:
    """Bars of each store side by side per group; error bars where an interval exists."""
    n = len(stores)
    width = 0.8 / n
    for j, ((_, label, colour), rows) in enumerate(zip(stores, values)):
        x = np.arange(len(rows)) - 0.4 + width * (j + 0.5)
        v = np.array([r[0] for r in rows])
        err = np.clip(np.array([[r[0] - r[1], r[2] - r[0]] for r in rows]).T, 0.0, None)
        ax.bar(x, v, width * 0.92, color=colour, label=label)
        if np.isfinite(err).any():
            ax.errorbar(
                x,
                v,
                yerr=np.nan_to_num(err),
                fmt="none",
                ecolor="#222222",
                elinewidth=0.7,
                capsize=1.5,
            )


def categories(stores: Stores) -> Drawn:
    if not all(s.get("categories") for s, _, _ in stores):
        return None
    th = stores[0][0].get("thresholds") or {"unshifted_max": 1, "marginal_max": 3}
    a, b = int(th["unshifted_max"]), int(th["marginal_max"])
    ticks = [
        f"unshifted\n(rank \u2264 {a})",
        f"marginal\n(rank {a + 1}\u2013{b})" if b > a + 1 else f"marginal\n(rank {b})",
        f"shifted\n(rank > {b})",
    ]
    fig, ax = _figure()
    values = [[_ci(s["categories"].get(c), 100) for c in CATEGORY_NAMES] for s, _, _ in stores]
    _grouped_bars(ax, stores, values)
    ax.set_xticks(range(3), ticks)
    ax.set_ylabel("share of answer positions (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Token categories by base rank")
    _legend(ax, stores)
    return (
        fig,
        "Token categories",
        "Fractions of answer positions unshifted, marginal and shifted (by the base model's rank of the aligned token), 95% intervals.",
    )


def _position_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in summary.get("by_position") or [] if r.get("positions") and not r.get("tail")]


def _curve(
    ax: Axes,
    stores: Stores,
    key: str | None,
    scale: float,
    keys: dict[int, str | None] | None = None,
) -> bool:
    """Mean line and interval band per store, against t; `keys` overrides `key` per store."""
    drawn = False
    for j, (summary, label, colour) in enumerate(stores):
        rows = _position_rows(summary)
        k = (keys or {}).get(j, key)
        if not rows or k is None:
            continue
        t = np.array([r["t"] for r in rows])
        v, lo, hi = np.array([_ci(r.get(k), scale) for r in rows]).T
        ax.fill_between(t, lo, hi, color=colour, alpha=0.22, linewidth=0)
        ax.plot(t, v, color=colour, label=label, marker="o" if len(t) <= 30 else None, markersize=2)
        drawn = True
    return drawn


def _position_axes(
    ax: Axes,
    stores: Stores,
    ylabel: str,
    title: str,
    ylim: tuple[float | None, float | None] | None,
) -> None:
    """What every figure against t has: its axis labels, t from 0, `ylim` (None: matplotlib's),
    its title and the legend of the stores."""
    ax.set_xlabel("position t in the answer (tokens)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlim(left=0)
    ax.set_title(title)
    _legend(ax, stores)


def _curve_figure(
    stores: Stores,
    key: str | None,
    scale: float,
    axes: tuple[str, str, tuple[float | None, float | None]],
    caption: tuple[str, str],
    keys: dict[int, str | None] | None = None,
) -> Drawn:
    """One `_curve` per store against t: `axes` is (y label, title, y range) for
    `_position_axes`, `caption` the figure's (name, sentence); None when no store has a row."""
    fig, ax = _figure()
    if not _curve(ax, stores, key, scale, keys):
        return _close(fig)
    _position_axes(ax, stores, *axes)
    return (fig, *caption)


def shift_by_position(stores: Stores) -> Drawn:
    max_t = (stores[0][0].get("intervals") or {}).get("max_t")
    tail = f" (t \u2264 {max_t})" if max_t is not None else ""
    return _curve_figure(
        stores,
        "shifted",
        100,
        ("shifted positions (%)", "Shifted fraction by token position", _PERCENT),
        (
            "Shift by token position",
            f"Fraction of positions shifted at each token position{tail}, 95% interval band: Re-Align's \u201cTDS diminishes over time\u201d.",
        ),
    )


def divergence_key(summary: dict[str, Any]) -> str | None:
    """The exact KL(aligned || base) of the pair head where the summary has it, else the top-k KL."""
    rows = _position_rows(summary)
    for key in ("mean_kl_aligned_base", "mean_kl"):
        if rows and key in rows[0]:
            return key
    return None


def divergence_by_position(stores: Stores) -> Drawn:
    keys = {j: divergence_key(s) for j, (s, _, _) in enumerate(stores)}
    labelled = [
        (s, label if keys[j] != "mean_kl" else f"{label}, top-k bound", colour)
        for j, (s, label, colour) in enumerate(stores)
    ]
    exact = all(k == "mean_kl_aligned_base" for k in keys.values() if k)
    what = (
        "exact, over the full vocabulary"
        if exact
        else "top-k + tail lower bound where the store has no exact KL"
    )
    return _curve_figure(
        labelled,
        None,
        1.0,
        ("mean KL(aligned \u2016 base) (nats)", "Divergence by token position", (0, None)),
        (
            "Divergence by token position",
            f"Mean KL(aligned \u2016 base) at each token position ({what}), 95% interval band: Qi et al.'s \u201ca few tokens deep\u201d.",
        ),
        keys,
    )


def _styled_curves(
    ax: Axes, stores: Stores, keys: list[tuple[str, str]], legend: bool = True
) -> bool:
    """Several statistics per store: colour per store, line style per statistic (`keys`:
    (summary key, line style); the title says which is which); interval bands as `_curve`.
    `legend`: label each store once (the figure's legend above the axes names the colours)."""
    drawn = False
    for summary, label, colour in stores:
        rows = _position_rows(summary)
        named = False
        for key, style in keys:
            if not rows or key not in rows[0]:
                continue
            t = np.array([r["t"] for r in rows])
            v, lo, hi = np.array([_ci(r.get(key)) for r in rows]).T
            ax.fill_between(t, lo, hi, color=colour, alpha=0.15, linewidth=0)
            text = label if legend and not named else "_nolegend_"
            ax.plot(t, v, color=colour, linestyle=style, label=text, linewidth=1.2)
            drawn = named = True
    return drawn


def divergences_by_position(stores: Stores) -> Drawn:
    if not any(_position_rows(s) and "mean_js" in _position_rows(s)[0] for s, _, _ in stores):
        return None
    fig, (top, bottom) = _figure(HEIGHT_IN * 1.7, rows=2, sharex=True)
    _styled_curves(top, stores, [("mean_kl_aligned_base", "-"), ("mean_kl_base_aligned", "--")])
    _styled_curves(bottom, stores, [("mean_js", "-"), ("mean_tv", "--")], legend=False)
    top.set_ylabel("mean KL (nats)")
    bottom.set_ylabel("mean JS (nats), TV")
    bottom.set_xlabel("position t in the answer (tokens)")
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
    top.set_title("KL(aligned \u2016 base) solid, KL(base \u2016 aligned) dashed")
    bottom.set_title("Jensen-Shannon solid, total variation dashed")
    _legend(top, stores)
    return (
        fig,
        "Divergences by token position",
        "Mean exact divergences between the two next-token distributions at each token position (KL both ways, Jensen-Shannon, total variation), 95% interval bands.",
    )


def branching_by_position(stores: Stores) -> Drawn:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = _figure()
    if not _styled_curves(ax, stores, [("aligned_branching", "-"), ("base_branching", "--")]):
        return _close(fig)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext: 10, 100
    ax.yaxis.set_minor_formatter(NullFormatter())
    title = "Branching factor: aligned solid, base dashed"
    _position_axes(ax, stores, "branching factor exp(H)", title, None)
    return (
        fig,
        "Branching factor by token position",
        "Each model's branching factor, exp of its mean next-token entropy, at each token position, 95% interval bands: Yang & Holtzman's \u201cgenerative horizon\u201d.",
    )


def base_top1_by_position(stores: Stores) -> Drawn:
    axes = ("base top-1 probability (%)", "Base model's confidence by token position", _PERCENT)
    return _curve_figure(
        stores,
        "mean_base_top1_prob",
        100,
        axes,
        (
            "Base top-1 probability by token position",
            "Mean probability of the base model's own top-1 token at each token position, 95% interval band: where a nudging threshold would let the aligned model step in.",
        ),
    )


def rank_histogram(stores: Stores) -> Drawn:
    hists: list[Any] = [s.get("rank_histogram") for s, _, _ in stores]
    if not all(hists):
        return None
    fig, ax = _figure()
    bins = [h["bin"] for h in hists[0]]
    nan = float("nan")
    values = [[(finite(h["fraction"]) * 100, nan, nan) for h in hist] for hist in hists]
    _grouped_bars(ax, stores, values)
    ax.set_xticks(range(len(bins)), bins)
    ax.set_xlabel("base model's rank of the aligned model's token")
    ax.set_ylabel("share of answer positions (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Base rank of the answer token")
    _legend(ax, stores)
    return (
        fig,
        "Base rank histogram",
        "Share of answer positions by the base model's rank of the token the aligned model wrote.",
    )


def top_shifted_tokens(stores: Stores) -> Drawn:
    tables = [shifted_tokens(s)[:TOKENS_SHOWN] for s, _, _ in stores]
    if not any(tables):
        return None
    heights = [max(len(t), 1) * 0.16 + 0.45 for t in tables]
    fig, axes = _figure(sum(heights) + 0.25, rows=len(stores), sharex=True, height_ratios=heights)
    axes = np.atleast_1d(axes)
    for ax, table, (_, label, colour) in zip(axes, tables, stores):
        y = np.arange(len(table))
        rates = [100 * r for _, r, _, _ in table]
        ax.barh(y, rates, color=colour, height=0.7)
        ax.set_yticks(y, [visible_token(text) for text, _, _, _ in table])
        ax.invert_yaxis()
        for yi, (_, rate, hits, count) in zip(y, table):
            ax.text(100 * rate + 1.5, yi, f"{hits}/{count}", va="center", fontsize=5.5)
        ax.set_xlim(0, 118)
        ax.set_title(
            label if len(stores) > 1 else f"Most often shifted tokens ({label})", loc="left"
        )
        if not table:
            ax.text(0.5, 0.5, "no token seen often enough", transform=ax.transAxes, ha="center")
    axes[-1].set_xticks(range(0, 101, 25))
    axes[-1].set_xlabel("shifted occurrences of the token (%)")
    return (
        fig,
        "Most shifted tokens",
        "Tokens most often shifted (among those seen often enough), with times shifted / times seen.",
    )


def nudged_by_position(stores: Stores) -> Drawn:
    """Nudged stores only (`tdsdist nudge`): where the aligned model had to step in."""
    keys = {j: "mean_nudged" if s.get("nudge") else None for j, (s, _, _) in enumerate(stores)}
    if not any(keys.values()):
        return None
    axes = ("tokens chosen by the aligned model (%)", "Nudged fraction by token position", _PERCENT)
    return _curve_figure(
        stores,
        None,
        100,
        axes,
        (
            "Nudged fraction by token position",
            "Share of positions whose token the aligned model chose in nudged decoding (the base model writes the rest) at each token position, 95% interval band: Fei et al.'s nudging.",
        ),
        keys,
    )


def top_nudged_tokens(stores: Stores) -> Drawn:
    """Nudged stores only: the tokens the aligned model chose most often, one panel per store."""
    nudged = [(s, label, colour) for s, label, colour in stores if s.get("nudge")]
    tables = [s["nudge"]["top_nudged_tokens"][:TOKENS_SHOWN] for s, _, _ in nudged]
    if not any(tables):
        return None
    heights = [max(len(t), 1) * 0.16 + 0.45 for t in tables]
    fig, axes = _figure(sum(heights) + 0.25, rows=len(nudged), sharex=True, height_ratios=heights)
    axes = np.atleast_1d(axes)
    for ax, table, (_, label, colour) in zip(axes, tables, nudged):
        y = np.arange(len(table))
        ax.barh(y, [r["count"] for r in table], color=colour, height=0.7)
        ax.set_yticks(y, [visible_token(r["token"] or str(r["token_id"])) for r in table])
        ax.invert_yaxis()
        for yi, r in zip(y, table):
            ax.text(
                r["count"], yi, f" {100 * r['rate']:.0f}% of {r['seen']}", va="center", fontsize=5.5
            )
        ax.set_xlim(0, 1.35 * max([r["count"] for r in table], default=1))  # room for the labels
        ax.set_title(label if len(nudged) > 1 else f"Most nudged tokens ({label})", loc="left")
    axes[-1].set_xlabel("times the aligned model chose the token")
    return (
        fig,
        "Most nudged tokens",
        "Tokens the aligned model chose most often in nudged decoding, with the share of the token's occurrences it chose.",
    )


def _close(fig: Figure) -> Drawn:
    """Nothing to draw: the figure is dropped (not registered anywhere, so nothing to close)."""
    return None
