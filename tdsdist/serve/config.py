"""`ServeConfig`: `score`'s model options (derived from `ScoreConfig`'s fields, docs included)
plus the service's own. Kept in one place so that it can move onto the composed option sections
of `config.py` as they land."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from tdsdist.config import ScoreConfig, _check_common, _check_positive, field_docs

#: `score`'s options that say which pair is served and how it is scored.
MODEL_FIELDS = ("aligned", "base", "aligned_adapter", "top_k", "base_template", "aligned_template", "dtype", "device", "head_dtype", "max_tokens_per_batch", "logits_chunk_mib", "trust_remote_code", "aligned_revision", "base_revision", "tp", "dist_timeout")  # fmt: skip
API_KEY_ENV = "TDSDIST_API_KEY"
LOOPBACK_NAMES = ("localhost",)


@dataclass(kw_only=True)
class _ServiceFields:
    host: str = "127.0.0.1"
    """Address to bind; any other than loopback needs --api-key."""
    port: int = 8000
    """TCP port (0: any free port; the `serving on` line says which)."""
    max_new_tokens: int = 512
    """Largest `max_new_tokens` a generate request may ask for (and its default)."""
    max_concurrent: int = 32
    """Requests in the engine at once (decoding together, or in a score batch)."""
    queue_size: int = 64
    """Requests waiting for the engine beyond --max-concurrent; more get 503 with Retry-After."""
    drain_seconds: float = 10.0
    """On SIGTERM / SIGINT: how long requests in flight may take to finish before they are cut."""
    api_key: str | None = None
    """Bearer token required on every endpoint but /health (default: $TDSDIST_API_KEY)."""
    record: str | None = None
    """Append each finished request to this JSONL file as a chat transcript `score` reads."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above it)."""
    batch_wait_ms: float = 5.0
    """How long a score request waits for others to share its forward pass."""


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _post_init(self: Any) -> None:
    if self.api_key is None:
        self.api_key = os.environ.get(API_KEY_ENV) or None
    if self.aligned is None and self.aligned_adapter is None:
        raise ValueError("aligned is required (or aligned_adapter, with base)")
    _check_common(self)
    _check_positive(self, "top_k", "max_tokens_per_batch", "logits_chunk_mib", "tp", "dist_timeout", "max_new_tokens", "max_concurrent", "queue_size", "max_body_bytes")  # fmt: skip
    if not 0 <= self.port < 65536:
        raise ValueError(f"port must be in 0..65535, got {self.port}")
    if self.drain_seconds < 0 or self.batch_wait_ms < 0:
        raise ValueError("drain_seconds and batch_wait_ms must be >= 0")
    if not _is_loopback(self.host) and not self.api_key:
        raise ValueError(
            f"host {self.host} is not a loopback address: serving beyond this machine needs"
            f" api_key (--api-key or ${API_KEY_ENV})"
        )


def _fields() -> list[tuple[str, Any, Any]]:
    own = {f.name: f for f in dataclasses.fields(ScoreConfig)}
    out = []
    for name in MODEL_FIELDS:
        f = own[name]
        default = "chat" if name == "aligned_template" else f.default
        kwargs: dict[str, Any] = {"metadata": f.metadata}
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        out.append((name, f.type, field(**kwargs)))
    for f in dataclasses.fields(_ServiceFields):
        out.append((f.name, f.type, field(default=f.default)))
    return out


def _docs() -> dict[str, str]:
    docs = {n: field_docs(ScoreConfig)[n] for n in MODEL_FIELDS}
    docs["aligned_template"] = (
        "Aligned context: `chat` (the tokenizer's chat template on the request's messages) or"
        " `input` / `input-verbatim` (the request's instruction is the whole prompt, verbatim)."
    )
    return {**docs, **field_docs(_ServiceFields)}


ServeConfig = dataclasses.make_dataclass(
    "ServeConfig",
    _fields(),
    kw_only=True,
    namespace={
        "__post_init__": _post_init,
        "field_docs_": _docs(),
        "required_": ("base",),
        "__doc__": "The options of `tdsdist serve` (module docstring).",
    },
)
ServeConfig.__module__ = __name__


def score_config(config: Any) -> ScoreConfig:
    """The `score` configuration of the same pair and options (what the models are loaded and
    the answers scored with); `data` and `store` are placeholders nothing reads."""
    return ScoreConfig(data="-", store="-", **{n: getattr(config, n) for n in MODEL_FIELDS})
