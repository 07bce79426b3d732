"""Stage 4, analysis of a store: `summary` (what `analyze` prints), `compare`, `show`, `report`.

Reads stores only (no model, no network), streaming over blocks of rows.
"""

from tdsdist.analysis.summary import summarize as summarize  # noqa: E402  (0.1.0 had them here)
from tdsdist.analysis_options import Thresholds as Thresholds  # noqa: E402
