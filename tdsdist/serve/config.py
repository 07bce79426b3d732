"""`ServeConfig`: the pair's option sections `score` runs with (`config.PAIR_SECTIONS`) plus the
service's own (`Service`)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from tdsdist.config import (
    PAIR_SECTIONS,
    Adapter,
    AlignedTemplate,
    Batching,
    Head,
    ModelPair,
    Parallel,
    ScoreConfig,
    Templates,
)
from tdsdist.options import Section, opt, section_values

API_KEY_ENV = "TDSDIST_API_KEY"
LOOPBACK_NAMES = ("localhost",)


@dataclass(kw_only=True)
class Service(Section):
    """The HTTP service: where it listens, what it admits, how it stops."""

    host: str = "127.0.0.1"
    """Address to bind; any other than loopback needs --api-key."""
    port: int = 8000
    """TCP port (0: any free port; the `serving on` line says which)."""
    max_new_tokens: int = field(default=512, metadata=opt(minimum=1))
    """Largest `max_new_tokens` a generate request may ask for (and its default)."""
    max_concurrent: int = field(default=32, metadata=opt(minimum=1))
    """Requests in the engine at once (decoding together, or in a score batch)."""
    queue_size: int = field(default=64, metadata=opt(minimum=1))
    """Requests waiting for the engine beyond --max-concurrent; more get 503 with Retry-After."""
    drain_seconds: float = 10.0
    """On SIGTERM / SIGINT: how long requests in flight may take to finish before they are cut."""
    api_key: str | None = None
    """Bearer token required on every endpoint but /health (default: $TDSDIST_API_KEY)."""
    record: str | None = None
    """Append each finished request to this JSONL file as a chat transcript `score` reads."""
    max_body_bytes: int = field(default=1 << 20, metadata=opt(minimum=1))
    """Largest request body accepted (413 above it)."""
    batch_wait_ms: float = 5.0
    """How long a score request waits for others to share its forward pass."""

    def check(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.drain_seconds < 0 or self.batch_wait_ms < 0:
            raise ValueError("drain_seconds and batch_wait_ms must be >= 0")
        if not _is_loopback(self.host) and not self.api_key:
            raise ValueError(
                f"host {self.host} is not a loopback address: serving beyond this machine needs"
                f" api_key (--api-key or ${API_KEY_ENV})"
            )


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(kw_only=True)
class ServeConfig(ModelPair, Adapter, Templates, Head, Batching, Parallel, Service):
    """The options of `tdsdist serve`."""

    aligned_template: AlignedTemplate = field(default="chat", metadata=opt(fingerprint="template"))
    """Aligned context: `chat` (the tokenizer's chat template on the request's messages) or
    `input` / `input-verbatim` (the request's instruction is the whole prompt, verbatim)."""


def score_config(config: ServeConfig) -> ScoreConfig:
    """The `score` configuration of the same pair and options (what the models are loaded and
    the answers scored with); `data` and `store` are placeholders nothing reads."""
    return ScoreConfig(data="-", store="-", **section_values(config, *PAIR_SECTIONS))
