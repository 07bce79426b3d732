"""The look shared by every figure: palette, sizes, fonts, and the summary readers the figures
share (`figures.py` lays the figures out and writes them; `figure_kinds.py` draws each kind)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under protan/deutan/tritan vision.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
COLUMN_WIDTH_IN = 3.4  # one column of ACL / ICLR / NeurIPS two-column pages (3.25-3.5 in)
HEIGHT_IN = 2.5
DPI = 300  # PNG: 1020 x 750 pixels at the default size
FONT_PT = 7.0  # a paper's captions are 8-9 pt; figure text slightly smaller stays legible
FOOTNOTE_PT = 5.5
FOOTNOTE_CHARS = 84  # per line at FOOTNOTE_PT across COLUMN_WIDTH_IN
TOKENS_SHOWN = 10
TOKEN_CHARS = 16
KINDS = (
    "categories",
    "shift_by_position",
    "divergence_by_position",
    "divergences_by_position",
    "branching_by_position",
    "base_top1_by_position",
    "rank_histogram",
    "top_shifted_tokens",
)
#: Drawn only for nudged stores (`tdsdist nudge`), after `KINDS`.
NUDGE_KINDS = ("nudged_by_position", "top_nudged_tokens")
CATEGORY_NAMES = ("unshifted", "marginal", "shifted")
#: matplotlib rcParams (values of mixed types).
RC: dict[RcKeyType, Any] = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT + 0.5,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": FONT_PT - 0.5,
    "ytick.labelsize": FONT_PT - 0.5,
    "legend.fontsize": FONT_PT - 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "text.parse_math": False,  # a token or model name with "$" is text, never mathtext
    "svg.hashsalt": "tdsdist",  # the same figure gives the same SVG bytes
    "svg.fonttype": "path",  # the SVG needs no fonts where it is opened
}


def shifted_tokens(summary: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(token text, shifted rate, times shifted, times seen) of the summary's token table: the
    one place that knows its keys (`shifted_rate`, or the older `shift_rate`, or the counts)."""
    out = []
    for row in summary.get("top_shifted_tokens") or []:
        count = int(row.get("count") or 0)
        hits = int(row.get("shifted") or 0)
        rate = row.get("shifted_rate", row.get("shift_rate"))
        if rate is None and count:
            rate = hits / count
        if rate is not None:
            out.append((str(row.get("token", row.get("token_id", "?"))), float(rate), hits, count))
    return out


def visible_token(text: str) -> str:
    """A token as the report shows it: spaces and newlines visible, control characters escaped."""
    if text == "":
        return "\u2205"
    for a, b in ((" ", "\u2423"), ("\n", "\u21b5"), ("\t", "\u21e5")):
        text = text.replace(a, b)
    text = "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in text)
    return text if len(text) <= TOKEN_CHARS else text[: TOKEN_CHARS - 1] + "\u2026"


def finite(x: Any) -> float:
    """A summary number as a float, NaN for null or infinite (matplotlib skips NaN)."""
    return float(x) if x is not None and np.isfinite(x) else float("nan")
