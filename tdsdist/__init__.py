"""tdsdist: token distribution shift between base and aligned LLMs, as a distributed inference job."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # lazy: `import tdsdist` stays light
    from pathlib import Path

    from tdsdist.api import TdsStore

__version__ = "0.1.0"


def open_store(path: Path | str) -> TdsStore:
    """Open a store for analysis; see `tdsdist.api.TdsStore`."""
    from tdsdist.api import open_store as _open

    return _open(path)
