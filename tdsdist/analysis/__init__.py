"""Stage 4, analysis of a store: `summary` (what `analyze` prints), `compare`, `show`, `report`.

Reads stores only (no model, no network), streaming over blocks of rows.
"""

from tdsdist.analysis.summary import Thresholds, summarize  # noqa: E402, F401  (0.1.0 had them here)
