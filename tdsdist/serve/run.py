"""`tdsdist serve`: load the pair once, then serve HTTP on rank 0 while the other ranks follow.

The order is the scoring job's: every check that can fail on the options (the API key for a
non-loopback host: `ServeConfig`; tokenizers, templates, vocabularies) runs before any model
loads. SIGTERM / SIGINT: uvicorn stops accepting and lets requests in flight finish for
`--drain-seconds`; then the engine cancels what is left, tells the other ranks to stop, and every
rank exits 0.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from tdsdist.engine.decoder import end_of_answer_ids
from tdsdist.engine.lockstep import LockstepDecoder
from tdsdist.engine.models import resolve_device
from tdsdist.engine.scorer import PairScorer
from tdsdist.errors import TdsError
from tdsdist.parallel.dist import Dist, destroy, init_distributed
from tdsdist.serve.config import score_config
from tdsdist.serve.engine import Engine
from tdsdist.serve.pair import PairInputs


def run_serve(config: Any, log: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM / SIGINT (module docstring)."""
    scoring = score_config(config)
    device = resolve_device(config.device)
    d = init_distributed(config.tp, config.dist_timeout, device)
    try:
        if d.dims.world != d.dims.tp:
            raise TdsError(
                f"serve runs one model replica: the world ({d.dims.world} processes) must equal"
                f" --tp ({d.dims.tp})"
            )
        inputs = PairInputs.load(scoring)
        runners = inputs.pair.load(device, d, scoring.head_dtype or "float32")
        chunk = config.logits_chunk_mib << 20
        aligned, base = runners["aligned"], runners["base"]
        scorer = PairScorer(aligned, base, config.top_k, chunk, config.max_tokens_per_batch)
        end = end_of_answer_ids(aligned.model, inputs.tokenizer)
        decoder = LockstepDecoder(aligned, base, config.top_k, chunk, end)
        if not d.is_main:  # rank 0 decides when to stop (after draining) and says so
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: None)
            Engine(scorer, decoder, d, 1, 1, 0.0).follow()
            return
        _serve_http(config, inputs, scorer, decoder, d, log)
    finally:
        destroy(d)


def _serve_http(
    config: Any,
    inputs: PairInputs,
    scorer: PairScorer,
    decoder: LockstepDecoder,
    d: Dist,
    log: Callable[[str], None],
) -> None:
    import uvicorn

    from tdsdist.serve.app import build_app
    from tdsdist.serve.metrics import ServeMetrics
    from tdsdist.serve.record import Recorder

    metrics = ServeMetrics()
    engine = Engine(
        scorer, decoder, d, config.max_concurrent, config.queue_size, config.batch_wait_ms, metrics
    )
    recorder = Recorder(config.record) if config.record else None
    app = build_app(
        engine,
        inputs,
        config.max_new_tokens,
        config.api_key,
        recorder,
        metrics,
        config.max_body_bytes,
    )
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        raise TdsError(f"cannot listen on {config.host}:{config.port}: {e.strerror}") from None
    sock.listen(2048)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=config.drain_seconds,
            lifespan="off",
        )
    )
    # uvicorn re-raises the signal it stopped on after shutting down: with these handlers in
    # place, that ends in a clean exit 0 instead of the default action.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    engine.start()
    host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    print(f"serving on http://{host}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop(timeout=config.drain_seconds + 5)
        if recorder is not None:
            recorder.close()
    log("tdsdist serve: stopped")
    sys.stdout.flush()
