"""tdsdist: token distribution shift between base and aligned LLMs, as a distributed inference job."""

__version__ = "0.1.0"
