"""`analyze`'s text: the summary of `summary.summarize` as lines for a terminal."""

from __future__ import annotations

from typing import Any

from tdsdist.analysis import measures
from tdsdist.analysis import nudging as nudge_stats
from tdsdist.analysis import published as pub
from tdsdist.analysis import tokens as token_tables
from tdsdist.analysis.groups import render_lines as group_lines


def render_text(summary: dict[str, Any]) -> str:
    lines = [f"{summary['examples']} examples, {summary['positions']} positions"]
    if summary.get("category_by") == "aligned-top1":
        lines.append("categories by the base rank of the aligned model's top 1 (AlignTDS's rule)")
    if summary["pending_units"]:
        lines.append(f"({summary['pending_units']} units still pending: not counted)")
    for name, c in summary["categories"].items():
        lines.append(f"  {name:<10} {c['count']:>10}  {100 * c['fraction']:6.2f}%")
    if not summary["positions"]:
        return "\n".join(lines)
    lines.append(
        f"aligned model's own top 1: {100 * summary['aligned_top1_fraction']:.1f}% of positions"
    )
    lines.append(
        f"base probability of the answer token: mean {summary['base_prob']['mean']:.3f}, median {summary['base_prob']['median']:.3f}"
    )
    kl = summary["kl"]
    lines.append(
        f"KL(aligned || base), top-k + tail lower bound: mean {kl['mean']:.3f}, median {kl['median']:.3g}, p90 {kl['p90']:.3g}, max {kl['max']:.3g}"
    )
    if summary.get("vocab_union"):  # appended aligned tokens: why the headline is JS, not KL
        u = summary["vocab_union"]
        lines.append(
            f"vocabulary union: the aligned model appends {u['aligned'] - u['base']} token(s) to"
            f" the base's {u['base']}; KL(aligned || base) is +inf, so the headline is JS and TV"
        )
    for name, d in summary.get("divergence", {}).items():
        if d["mean"] is not None:
            lines.append(
                f"exact {name} (mean over positions, 95% CI over examples): {d['mean']:.4g}"
                f" [{d['ci'][0]:.4g}, {d['ci'][1]:.4g}]"
            )
    lines += measures.render_lines(summary)
    if summary.get("nudge"):
        lines += nudge_stats.render_lines(summary["nudge"])
    lines.append(
        "shifted fraction by position: "
        + "  ".join(
            f"{r['bucket']}: {_pct(r['shifted_fraction'])}" for r in summary["by_position_bucket"]
        )
    )
    first = [r for r in summary["by_position"][:5] if r["positions"]]
    if first:
        lines.append(
            "shifted at t = 0..4 (95% CI over examples): "
            + "  ".join(
                f"{r['t']}: {_pct(r['shifted']['fraction'])} [{_pct(r['shifted']['ci'][0])},"
                f" {_pct(r['shifted']['ci'][1])}]"
                for r in first
            )
        )
    if summary["excluded"]["positions"]:
        lines.append(f"left out: {summary['excluded']['positions']} positions (filters)")
    lines += group_lines(summary.get("groups"))
    lines += pub.render_lines(summary.get("published"))
    lines += token_tables.render_lines(summary.get("tokens"))
    shifted = summary["top_shifted_tokens"][:10]
    if shifted:
        lines.append(
            "most shifted tokens: "
            + ", ".join(f"{t['token']!r} ({t['shifted']}/{t['count']})" for t in shifted)
        )
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
