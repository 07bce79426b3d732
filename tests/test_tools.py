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


def test_gpu_correctness_passes_on_cpu(tmp_path: Path) -> None:
    """The same checks the GPU run makes, here on the CPU: the engine equals the reference."""
    out = tmp_path / "correct.json"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_correctness.py"), "--device", "cpu",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["passed"] and all(report["passed"].values())
    assert report["attention_misaligned_control"] > 0.1  # the check can tell a wrong mask apart


def test_bench_and_profile_prefix_run_tiny(tmp_path: Path, tiny_pair) -> None:
    from tdsdist.jobs.demo import demo_data_path

    resources = demo_data_path().parent
    urial = next(resources.glob("urial*"))
    out = tmp_path / "prefix.json"
    cmd = [sys.executable, str(ROOT / "tools" / "bench_prefix.py"), "--random-shape", "tiny",
           "--model", str(tiny_pair[0]), "--data", str(demo_data_path()), "--urial", str(urial),
           "--examples", "3", "--max-answer", "24", "--repeats", "1", "--compare-masked",
           "--threads", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["shared_prefix_tokens"] > 100 and report["prefix_cache_mib"] > 0
    assert set(report["variants"]) == {
        "plain", "urial (cached)", "urial (recomputed)", "urial (cached), masked sdpa"
    }  # fmt: skip
    assert report["agreement"]["max_abs_logprob_diff"] < 1e-4
    cmd = [sys.executable, str(ROOT / "tools" / "profile_prefix.py"), "--shape", "tiny",
           "--batch", "2", "--prefix", "40", "--suffix", "40", "--rows", "3"]  # fmt: skip
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "=== plain" in text and "=== cached prefix" in text
