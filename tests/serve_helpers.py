"""A real `tdsdist serve` for tests: `python -m tdsdist.serve` in a subprocess on 127.0.0.1 with a
free port (`--port 0`; the `serving on` line says which), and small HTTP / SSE clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

START_TIMEOUT_S = 120


class Server:
    """One server process; `url`, `stderr_text()`, `terminate()` (SIGTERM, returns the exit code)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
        defaults: tuple[str, ...] = ("--port", "0", "--device", "cpu"),
    ) -> None:
        """`launcher`: the command before the arguments (default `python -m tdsdist.serve`)."""
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        launcher = launcher or [sys.executable, "-m", "tdsdist.serve"]
        self.proc = subprocess.Popen(
            [*launcher, *defaults, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = self._wait_ready()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("serving on "):
                return line.split()[-1]
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError(f"the server did not start: {''.join(self._stderr)[-2000:]}")

    def stderr_text(self) -> str:
        return "".join(self._stderr)

    def terminate(self, timeout: float = 60, workers: bool = False) -> int:
        """SIGTERM to the server, or with `workers` to each process torchrun started (as a
        cluster's scheduler signals every rank); the launcher's exit code."""
        if self.proc.poll() is None:
            if workers:
                children = subprocess.run(
                    ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
                )
                for pid in children.stdout.split():
                    os.kill(int(pid), signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def model_args(pair: tuple[Path, Path], top_k: int = 5) -> list[str]:
    return ["--aligned", str(pair[0]), "--base", str(pair[1]), "--top-k", str(top_k)]


def post(url: str, path: str, body: object, **kwargs) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120, **kwargs)


def sse_events(url: str, body: dict, **kwargs) -> Iterator[dict]:
    """The `data:` events of a streamed generate, parsed, in order."""
    with httpx.stream("POST", url + "/v1/generate", json=body, timeout=120, **kwargs) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])
            else:
                assert line == "", line
