"""`--record FILE.jsonl`: each finished request appended as a chat transcript that `score` reads
as it is (`--aligned-template chat`): an afternoon of exploration becomes a data set.

Each record is one `os.write` of a whole line to a file opened with `O_APPEND`, so a killed server
leaves whole lines only (a partial write of a few hundred bytes does not happen on a local file
system; a line that did not make it is simply absent)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any


class Recorder:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(
        self, kind: str, messages: list[dict[str, str]], answer: str, options: dict[str, Any]
    ) -> str:
        """Append one record; returns its id."""
        record_id = f"{kind}-{uuid.uuid4().hex[:12]}"
        record = {
            "id": record_id,
            "messages": [*messages, {"role": "assistant", "content": answer}],
            "options": {"endpoint": kind, **options},
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            written = os.write(self._fd, line)
        assert written == len(line), "a short write to the record file"
        return record_id

    def close(self) -> None:
        os.close(self._fd)
