"""tdsdist: token distribution shift between base and aligned LLMs, as a distributed inference job."""

__version__ = "0.1.0"


def open_store(path):  # noqa: ANN001, ANN201  (lazy: `import tdsdist` stays light)
    """Open a store for analysis; see `tdsdist.api.TdsStore`."""
    from tdsdist.api import open_store as _open

    return _open(path)
