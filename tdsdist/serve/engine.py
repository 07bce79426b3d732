"""The engine loop: owns the models on its own thread; the HTTP layer meets it at a queue.

Each iteration rank 0 takes what arrived, builds one `Work` (score batches, generate requests to
add, ones to drop, whether to step) and, under torchrun, broadcasts it to the other ranks, which
run the same calls (`follow`): a tensor-parallel pair serves as it scores. Score requests wait up
to `batch_wait_ms` for others, then go through `PairScorer` together (token-budgeted batches).
Generate requests join the lockstep decoder's running batch at its next step (continuous
batching); a cancelled one (its client left) is dropped before the next step.

Results go back through each job's `emit` (thread-safe: the HTTP layer hands in a function that
posts onto its event loop). A failing score batch is retried one request at a time, so a request
that fails inside the engine fails alone; a failing decode step fails the requests in that batch.
A failing collective (a rank died) ends the process with one line: no hang.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.distributed as dist

from tdsdist.engine.lockstep import LockstepDecoder, LockstepRequest
from tdsdist.engine.pair_head import PairOutput
from tdsdist.engine.scorer import AnswerPair, PairScorer
from tdsdist.metrics import topk_kl
from tdsdist.parallel.dist import Dist

Emit = Callable[[str, Any], None]  # (kind, payload): "result" | "token" | "done" | "error"


@dataclass
class Job:
    """One request inside the engine (rank 0 only)."""

    kind: str  # score | generate
    payload: Any  # AnswerPair | LockstepRequest
    emit: Emit
    id: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Work:
    """One iteration's calls, the same on every rank (what rank 0 broadcasts)."""

    score: list[tuple[str, list[int], list[int], list[int]]] = field(default_factory=list)
    add: list[dict[str, Any]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    step: bool = False
    stop: bool = False


class EngineFull(Exception):
    """The queue is full: the HTTP layer answers 503 with Retry-After."""


def pair_arrays(out: PairOutput) -> dict[str, np.ndarray]:
    """Store-named arrays of pair-head rows, with the top-k KL beside them (as `score` stores)."""
    arrays = out.arrays()
    arrays["positions/kl"] = topk_kl(
        arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
    )
    return arrays


class Engine:
    """The models and the loop (module docstring). `start()` runs it on a thread (rank 0);
    other ranks call `follow()` in their main thread."""

    def __init__(
        self,
        scorer: PairScorer,
        decoder: LockstepDecoder,
        d: Dist,
        max_concurrent: int,
        queue_size: int,
        batch_wait_ms: float,
        metrics: Any = None,
    ) -> None:
        self.scorer, self.decoder, self.d = scorer, decoder, d
        self.max_concurrent, self.queue_size = max_concurrent, queue_size
        self.batch_wait = batch_wait_ms / 1000
        self.metrics = metrics
        self.inbox: queue.Queue[Job] = queue.Queue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._scoring: list[Job] = []
        self._decoding: dict[str, Job] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._admitted = 0  # queued or in the engine
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    # ---- the HTTP side (any thread) ----
    def submit(self, job: Job) -> None:
        """Hand a job to the engine, or raise `EngineFull`."""
        with self._lock:
            if self._admitted >= self.max_concurrent + self.queue_size or self._stop.is_set():
                raise EngineFull()
            self._admitted += 1
        job.id = f"{job.kind}-{next(self._ids)}"
        if isinstance(job.payload, LockstepRequest):
            job.payload.id = job.id
        self.inbox.put(job)

    def depth(self) -> int:
        return self._admitted

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="tdsdist-engine", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is left, tell the other ranks to stop, and wait for the loop."""
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout)

    # ---- the loop (rank 0) ----
    def _run(self) -> None:
        try:
            while True:
                work = self._plan()
                self._broadcast(work)
                if work.stop:
                    return
                self._execute(work)
        except _CollectiveError as e:
            _exit(f"a rank stopped answering ({e})")
        except Exception as e:  # noqa: BLE001 - a broken loop must end the server, not hang it
            _exit(f"the engine loop failed ({e.__class__.__name__}: {e})")

    def _finish(self, job: Job) -> None:
        with self._lock:
            self._admitted -= 1

    def _plan(self) -> Work:
        idle = not self._decoding and not self._scoring and not self._waiting
        try:  # block only when there is nothing to do
            self._waiting.append(self.inbox.get(timeout=0.05 if idle else 0.0005))
        except queue.Empty:
            pass
        while True:
            try:
                self._waiting.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        work = Work()
        if self._stop.is_set():
            for job in [*self._waiting, *self._scoring, *self._decoding.values()]:
                job.emit("error", "the server is shutting down")
                self._finish(job)
            self._waiting.clear()
            self._scoring.clear()
            self._decoding.clear()
            work.stop = True
            return work
        for job_id, job in list(self._decoding.items()):
            if job.cancelled.is_set():
                work.remove.append(job_id)
                del self._decoding[job_id]
                self._finish(job)
                self._count("cancelled")
        busy = len(self._decoding) + len(self._scoring)
        while self._waiting and busy < self.max_concurrent:
            job = self._waiting.popleft()
            busy += 1
            if job.cancelled.is_set():
                self._finish(job)
                continue
            if job.kind == "score":
                self._scoring.append(job)
            else:
                self._decoding[job.id] = job
                r: LockstepRequest = job.payload
                work.add.append(
                    dict(
                        id=r.id,
                        contexts=r.contexts,
                        max_new_tokens=r.max_new_tokens,
                        temperature=r.temperature,
                        top_p=r.top_p,
                        seed=r.seed,
                    )
                )
        now = time.monotonic()
        if self._scoring and (
            now - self._scoring[0].arrived >= self.batch_wait or busy >= self.max_concurrent
        ):
            work.score = [
                (j.id, j.payload.aligned_context, j.payload.base_context, j.payload.answer)
                for j in self._scoring
            ]
        work.step = bool(self._decoding)
        return work

    def _broadcast(self, work: Work) -> Work:
        if not self.d.distributed:
            return work
        box = [work]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as e:  # noqa: BLE001 - any failure of the collective ends the server
            raise _CollectiveError(f"{e.__class__.__name__}: {str(e).splitlines()[0]}") from None
        return box[0]

    def _execute(self, work: Work) -> None:
        """Run one iteration's calls; on rank 0 also hand the results to the jobs."""
        main = self.d.is_main
        if work.score:
            jobs = {j.id: j for j in self._scoring} if main else {}
            self._score(work.score, jobs)
            if main:
                self._scoring = [j for j in self._scoring if j.id not in jobs]
        for request_id in work.remove:
            self.decoder.remove(request_id)
        for spec in work.add:
            self.decoder.add(LockstepRequest(**spec))
        if work.step:
            self._step(main)

    def _score(
        self, specs: list[tuple[str, list[int], list[int], list[int]]], jobs: dict[str, Job]
    ) -> None:
        answers = [AnswerPair(a, b, ans) for _, a, b, ans in specs]
        started = time.perf_counter()
        results: list[dict[str, np.ndarray] | Exception]
        try:
            results = [self._score_answers(answers)]
            groups = [specs]
        except _CollectiveError:
            raise
        except Exception:  # noqa: BLE001 - one by one, so that a failing request fails alone
            results, groups = [], []
            for spec, answer in zip(specs, answers):
                try:
                    results.append(self._score_answers([answer]))
                except _CollectiveError:
                    raise
                except Exception as e:  # noqa: BLE001
                    results.append(e)
                groups.append([spec])
        if self.metrics is not None and self.d.is_main:
            self.metrics.batch("score", len(specs), time.perf_counter() - started)
        for group, result in zip(groups, results):
            offsets = np.cumsum([0] + [len(s[3]) for s in group])
            for n, spec in enumerate(group):
                job = jobs.get(spec[0])
                if job is None:
                    continue
                if isinstance(result, Exception):
                    job.emit("error", f"scoring failed: {result.__class__.__name__}: {result}")
                    self._count("error")
                else:
                    rows = slice(offsets[n], offsets[n + 1])
                    job.emit("result", {k: v[rows] for k, v in result.items()})
                    self._count("ok")
                self._finish(job)

    def _score_answers(self, answers: list[AnswerPair]) -> dict[str, np.ndarray]:
        arrays = self.scorer.score(answers)
        arrays["positions/kl"] = topk_kl(
            arrays["aligned/top_logprobs"], arrays["base/logprobs_at_aligned_top"]
        )
        return arrays

    def _step(self, main: bool) -> None:
        started = time.perf_counter()
        batch = len(self.decoder.active) + len(self.decoder.pending)
        try:
            outputs = self.decoder.step()
        except Exception as e:  # noqa: BLE001 - the batch's requests fail, the server goes on
            for request in [*self.decoder.active, *self.decoder.pending]:
                self.decoder.remove(request.id)
                job = self._decoding.pop(request.id, None) if main else None
                if job is not None:
                    job.emit("error", f"decoding failed: {e.__class__.__name__}: {e}")
                    self._finish(job)
                    self._count("error")
            return
        if not main:
            return
        if self.metrics is not None:
            self.metrics.batch("generate", batch, time.perf_counter() - started)
        for out in outputs:
            job = self._decoding.get(out.id)
            if job is None:
                continue
            if out.token is not None:
                assert out.stats is not None  # a new position comes with its row
                job.emit("token", (out.token, pair_arrays(out.stats)))
            if out.finish_reason is not None:
                job.emit("done", out.finish_reason)
                del self._decoding[out.id]
                self._finish(job)
                self._count("ok")

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outcome(outcome)

    # ---- the other ranks ----
    def follow(self) -> None:
        """Run rank 0's iterations until it says stop (ranks > 0)."""
        while True:
            box: list[Any] = [None]
            try:
                dist.broadcast_object_list(box, src=0)
            except Exception as e:  # noqa: BLE001
                print(
                    f"tdsdist serve: rank {self.d.rank}: rank 0 stopped answering"
                    f" ({e.__class__.__name__}); exiting",
                    file=sys.stderr,
                )
                sys.stderr.flush()
                os._exit(1)
            work: Work = box[0]
            if work.stop:
                return
            self._execute(work)


class _CollectiveError(RuntimeError):
    pass


def _exit(reason: str) -> None:
    """One line, then out: requests waiting on a dead engine would otherwise hang."""
    print(f"tdsdist serve: {reason}; exiting", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)
