"""The HTTP layer: a thin FastAPI app over the engine (vLLM's `api_server.py` over its engine).

Request bodies are pydantic models (strict types, unknown fields refused), so every 4xx comes from
one place as `{"error": "<one line naming the field>"}`, and nothing about a bad request reaches
the log. Streaming is Server-Sent Events: one `data:` event per token with its position object
(the `show --json` position), then `{"done": true, ...}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from tdsdist.analysis.show import position_records
from tdsdist.engine.lockstep import LockstepRequest
from tdsdist.errors import TdsError
from tdsdist.inputs.transcripts import check_messages
from tdsdist.metrics import CATEGORIES
from tdsdist.serve.engine import Engine, EngineFull, Job
from tdsdist.serve.metrics import ServeMetrics
from tdsdist.serve.page import MAX_TOKEN_IDS, WithPage
from tdsdist.serve.pair import PairInputs, RequestError
from tdsdist.serve.record import Recorder
from tdsdist.store import DIVERGENCES

RETRY_AFTER_S = 1


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    instruction: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> Prompt:
        if (self.instruction is None) == (self.messages is None):
            raise ValueError("give exactly one of instruction and messages")
        return self

    def conversation(self) -> list[dict[str, str]]:
        """The messages before the answer, checked as a transcript's (ends with a user turn)."""
        if self.instruction is not None:
            return [{"role": "user", "content": self.instruction}]
        assert self.messages is not None
        try:
            checked = check_messages(
                "request", {"messages": [m.model_dump() for m in self.messages]}
            )
        except TdsError as e:
            raise RequestError(str(e).removeprefix("request: ")) from None
        if not checked or checked[-1]["role"] != "user":
            raise RequestError("messages: the last message must be a user turn")
        return checked


class ScoreRequest(Prompt):
    answer: str


class GenerateRequest(Prompt):
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    stream: bool = False


class TokensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ids: list[int] = Field(max_length=MAX_TOKEN_IDS)


class JSON(JSONResponse):
    """`show --json`'s encoding: an infinite KL is written as `Infinity`, as `show` writes it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False).encode("utf-8")


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSON:
    return JSON({"error": message}, status_code=status, headers=headers)


def _field_error(exc: RequestValidationError) -> tuple[int, str]:
    """One line naming the field of pydantic's first error (400 for a body that is not JSON)."""
    first = exc.errors()[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return 400, "the body is not valid JSON"
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    name = ".".join(loc) or "body"
    if kind == "missing":
        return 422, f"{name}: required field missing"
    if kind == "extra_forbidden":
        return 422, f"{name}: unknown field"
    if kind == "model_attributes_type":
        return 422, "body: must be a JSON object (sent as Content-Type: application/json)"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return 422, f"{name}: {message}"


def summarise(positions: list[dict[str, Any]]) -> dict[str, Any]:
    """Category counts and fractions and mean divergences of an answer's positions."""
    n = len(positions)
    counts = {c: sum(p["category"] == c for p in positions) for c in CATEGORIES}
    means: dict[str, float | None] = {}
    for name in DIVERGENCES:
        values = [p["divergence"][name] for p in positions]
        means[name] = float(np.mean(values)) if values else None
    means["kl"] = float(np.mean([p["kl"] for p in positions])) if positions else None
    return {
        "positions": n,
        "counts": counts,
        "fractions": {c: (counts[c] / n if n else None) for c in CATEGORIES},
        "mean": means,
    }


class BodyLimit:
    """ASGI middleware: a body above `limit` bytes gets 413 before the app reads it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = error(413, f"body: larger than {self.limit} bytes")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooBig()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooBig:
            await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def build_app(
    engine: Engine,
    inputs: PairInputs,
    max_new_tokens: int,
    api_key: str | None = None,
    recorder: Recorder | None = None,
    metrics: ServeMetrics | None = None,
    max_body_bytes: int = 1 << 20,
) -> Any:
    """The ASGI application (FastAPI inside the body-size limit)."""
    app = FastAPI(title="tdsdist serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = metrics or ServeMetrics()
    tokenizer = inputs.tokenizer

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSON:
        status, message = _field_error(exc)
        metrics.requests.labels(request.url.path, "invalid").inc()
        return error(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSON:  # 404, 405
        return error(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers
        )

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSON:
        metrics.requests.labels(request.url.path, "invalid").inc()
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSON:  # one line, no traceback
        print(
            f"tdsdist serve: {request.url.path}: {exc.__class__.__name__}: {exc}", file=sys.stderr
        )
        metrics.requests.labels(request.url.path, "error").inc()
        return error(500, "internal error")

    @app.middleware("http")
    async def _auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                unauthorized = error(401, "authorization: missing or wrong Bearer token")
                unauthorized.headers["WWW-Authenticate"] = "Bearer"
                return unauthorized
        return await call_next(request)

    def submit(kind: str, payload: Any) -> tuple[Job, asyncio.Queue[tuple[str, Any]]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(event: str, data: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (event, data))
            except RuntimeError:  # the loop is closed: the client is long gone
                pass

        job = Job(kind, payload, emit)
        engine.submit(job)
        metrics.queue_depth.set(engine.depth())
        return job, events

    def busy(path: str) -> JSON:
        metrics.requests.labels(path, "rejected").inc()
        return error(503, "the server is busy: retry later", {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/health")
    async def health() -> JSON:
        return JSON({"status": "ok", "queue_depth": engine.depth()})

    @app.post("/v1/tokens")
    async def tokens(body: TokensRequest) -> JSON:
        """Each id's text alone (`show --json`'s `token`): the page's top-k lists."""
        for n, i in enumerate(body.ids):
            if not 0 <= i < len(tokenizer):
                raise RequestError(f"ids[{n}]: {i} is not a token id (0..{len(tokenizer) - 1})")
        return JSON({"tokens": [tokenizer.decode([i]) for i in body.ids]})

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue_depth.set(engine.depth())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> JSON:
        started = time.perf_counter()
        messages = body.conversation()
        pair = inputs.answer_pair(messages, body.answer)
        try:
            job, events = submit("score", pair)
        except EngineFull:
            return busy("/v1/score")
        try:
            kind, data = await events.get()
        finally:
            job.cancelled.set()
        if kind == "error":
            metrics.requests.labels("/v1/score", "error").inc()
            return error(500, data)
        positions = position_records(pair.answer, data, tokenizer)
        summary = summarise(positions)
        if recorder is not None:
            recorder.append("score", messages, body.answer, {})
        metrics.tokens.labels("scored").inc(len(positions))
        metrics.requests.labels("/v1/score", "ok").inc()
        metrics.latency.labels("/v1/score").observe(time.perf_counter() - started)
        return JSON({"positions": positions, "summary": summary})

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest) -> Response:
        started = time.perf_counter()
        limit = body.max_new_tokens or max_new_tokens
        if limit > max_new_tokens:
            raise RequestError(f"max_new_tokens: {limit} is above the server's {max_new_tokens}")
        messages = body.conversation()
        contexts = inputs.contexts(messages, limit)
        request = LockstepRequest("", contexts, limit, body.temperature, body.top_p, body.seed)
        try:
            job, events = submit("generate", request)
        except EngineFull:
            return busy("/v1/generate")
        options = {
            "max_new_tokens": limit,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
        }

        async def run() -> AsyncIterator[dict[str, Any]]:
            """Position objects as they come, then the last event."""
            ids: list[int] = []
            positions: list[dict[str, Any]] = []
            try:
                while True:
                    kind, data = await events.get()
                    if kind == "token":
                        token, arrays = data
                        position = position_records([token], arrays, tokenizer)[0]
                        position["t"] = len(ids)
                        if not ids:
                            metrics.first_token.observe(time.perf_counter() - started)
                        ids.append(token)
                        positions.append(position)
                        yield position
                    elif kind == "done":
                        answer = tokenizer.decode(ids)
                        if recorder is not None and ids:
                            recorder.append("generate", messages, answer, options)
                        metrics.tokens.labels("generated").inc(len(ids))
                        metrics.requests.labels("/v1/generate", "ok").inc()
                        metrics.latency.labels("/v1/generate").observe(
                            time.perf_counter() - started
                        )
                        yield {
                            "done": True,
                            "answer": answer,
                            "token_ids": ids,
                            "finish_reason": data,
                            "summary": summarise(positions),
                        }
                        return
                    else:
                        metrics.requests.labels("/v1/generate", "error").inc()
                        yield {"error": data}
                        return
            finally:  # a client that left: its slot is freed at the next step
                job.cancelled.set()

        if body.stream:

            async def sse() -> AsyncIterator[bytes]:
                async for event in run():
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()

            return StreamingResponse(
                sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        positions, last = [], {}
        async for event in run():
            if "t" in event:
                positions.append(event)
            else:
                last = event
        if "error" in last:
            return error(500, last["error"])
        last.pop("done")
        return JSON({**last, "positions": positions})

    return BodyLimit(WithPage(app), max_body_bytes)
