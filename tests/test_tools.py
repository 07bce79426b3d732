"""The device-machine script must work when a GPU is lent: run its code path on CPU here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--tiny", "--device", "cpu",
           "--sequences", "3", "--context", "8", "--answer", "16", "--repeats", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["answer_positions"] == 48
    for name in ("tdsdist", "bare"):
        assert report[name]["positions_per_second"] > 0 and report[name]["mfu"] > 0
    assert report["tdsdist_over_bare"] > 0
