"""Distributed scoring through the real launcher (`launch/torchrun.sh`, gloo on CPU, one thread per
rank): data parallel, two nodes on loopback, concurrent array tasks, a killed rank. Every store
must equal the single-process one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tdsdist_testkit import assert_float32_close
from tdsdist_testkit.cli_args import cli_args

from tdsdist.cli import main
from tdsdist.errors import TdsError
from tdsdist.jobs.score import FAULT_ENV
from tdsdist.parallel.dist import ParallelDims, task_share
from tdsdist.store import Store

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = str(ROOT / "launch" / "torchrun.sh")
EXACT = ["aligned/top_ids", "base/top_ids", "aligned/rank", "base/rank", "positions/token_id"]
CLOSE = [
    "aligned/logprob",
    "base/logprob",
    "aligned/top_logprobs",
    "base/top_logprobs",
    "positions/kl",
    "aligned/entropy",
]


def args(pair, store: Path, *extra: str) -> list[str]:
    aligned, base = pair
    flags = dict(top_k=5, limit=6, unit_size=1, max_output_tokens=24, dist_timeout=60)
    return cli_args(None, aligned, base, store=store, **flags, extra=extra)


def launch(
    score_args: list[str], env: dict[str, str] | None = None, wait: bool = True, **launcher_env
):
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        **{k: str(v) for k, v in launcher_env.items()},
        **(env or {}),
    }
    cmd = ["bash", LAUNCHER, *score_args]
    if not wait:
        return subprocess.Popen(
            cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("single") / "s.zarr"
    result = CliRunner().invoke(main, ["score", *args(tiny_pair, store)])
    assert result.exit_code == 0, result.output
    return store


def assert_same(store: Path, reference: Path) -> None:
    got, want = Store(store, mode="r"), Store(reference, mode="r")
    assert got.committed().all()
    for name in EXACT:
        np.testing.assert_array_equal(got.read(name), want.read(name), err_msg=name)
    for name in CLOSE:
        assert_float32_close(got.read(name), want.read(name), err_msg=name)


def test_layout_is_checked_up_front() -> None:
    assert ParallelDims(world=8, local_world=8, tp=4).dp == 2
    with pytest.raises(TdsError, match="--tp 3 does not divide the 8 processes per node"):
        ParallelDims(world=16, local_world=8, tp=3)
    with pytest.raises(TdsError, match="world size 6"):
        ParallelDims(world=6, local_world=4, tp=4)


def test_task_share_from_flags_and_slurm(monkeypatch) -> None:
    assert task_share(None, None) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert task_share(None, None) == (1, 3)
    assert task_share(2, None) == (2, 3)
    with pytest.raises(TdsError, match="--task-index 3"):
        task_share(3, 3)


def test_data_parallel_two_ranks(tiny_pair, reference, tmp_path: Path) -> None:
    store = tmp_path / "dp.zarr"
    result = launch(args(tiny_pair, store), NPROC=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2 = tp 1 x dp 2" in result.stderr
    assert (
        json.loads(result.stdout.strip().splitlines()[-1])["timing"]["positions"]
        == Store(reference).meta["positions"]
    )
    assert_same(store, reference)


def test_two_nodes_on_loopback(tiny_pair, reference, tmp_path: Path) -> None:
    store = tmp_path / "nodes.zarr"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        launch(
            args(tiny_pair, store),
            wait=False,
            NPROC=1,
            NNODES=2,
            RDZV_ENDPOINT=endpoint,
            RDZV_ID="t2n",
        )
        for _ in range(2)
    ]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    assert any("world 2 = tp 1 x dp 2" in err for _, err in outs)
    assert_same(store, reference)


def test_concurrent_array_tasks_share_one_store(tiny_pair, reference, tmp_path: Path) -> None:
    store = tmp_path / "array.zarr"  # does not exist yet: both tasks race to create it
    tasks = [
        launch(
            args(tiny_pair, store, "--task-index", str(i), "--task-count", "2"), wait=False, NPROC=1
        )
        for i in range(2)
    ]
    for task in tasks:
        _, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-3000:]
    status = CliRunner().invoke(main, ["status", str(store), "--task-count", "2", "--json"])
    report = json.loads(status.output)
    assert report["done"] == report["units"] == 6 and report["pending"] == 0
    assert [t["done"] for t in report["tasks"]] == [3, 3]
    assert_same(store, reference)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".array.zarr")]
    assert leftovers == []


def test_killed_rank_fails_fast_and_resume_finishes(tiny_pair, reference, tmp_path: Path) -> None:
    store = tmp_path / "killed.zarr"
    start = time.monotonic()
    # A rank dies by SIGKILL after writing its first unit's data, before committing it. Units are
    # claimed dynamically, so which rank gets a unit first is up to timing: any rank that does dies.
    first = launch(args(tiny_pair, store), env={FAULT_ENV: "0"}, NPROC=2)
    elapsed = time.monotonic() - start
    assert first.returncode != 0
    assert elapsed < 120, f"the job took {elapsed:.0f} s to notice a dead rank"
    assert not Store(store, mode="r").committed().all()
    second = launch(args(tiny_pair, store), NPROC=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same(store, reference)


def test_sigterm_stops_cleanly_and_resumes(tiny_pair, reference, tmp_path: Path) -> None:
    store = tmp_path / "term.zarr"
    cmd = [sys.executable, "-m", "tdsdist.score", *args(tiny_pair, store, "--limit", "20")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first unit is committed, then preempt
        try:
            if Store(store, mode="r").committed().any():
                break
        except Exception:
            pass
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    done = Store(store, mode="r").committed()
    if done.all():
        pytest.skip("the run finished before SIGTERM arrived; nothing to check")
    assert proc.returncode == 143, err[-2000:]
    assert "stopped on SIGTERM" in err
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert Store(store, mode="r").committed().all()


@pytest.fixture(scope="module")
def three_head_pair(tmp_path_factory):
    """A pair whose 3 attention heads tp=2 does not divide, with padded vocabulary rows."""
    from tdsdist_testkit import save_tiny_pair

    root = tmp_path_factory.mktemp("three_heads")
    return save_tiny_pair(
        root,
        vocab_size=301,
        seed=4,
        num_heads=3,
        num_kv_heads=3,
        hidden_size=48,
        model_vocab_size=320,
    )


@pytest.mark.slow
def test_tensor_parallel_two_ranks_three_heads(three_head_pair, tmp_path: Path) -> None:
    single, tp = tmp_path / "single.zarr", tmp_path / "tp.zarr"
    result = CliRunner().invoke(main, ["score", *args(three_head_pair, single)])
    assert result.exit_code == 0, result.output
    run = launch(args(three_head_pair, tp, "--tp", "2"), NPROC=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world 2 = tp 2 x dp 1" in run.stderr
    assert_same(tp, single)


@pytest.fixture(scope="module")
def tied_sharded_pair(tmp_path_factory):
    """Tied embeddings, padded vocabulary, each checkpoint stored in bfloat16 and cut into several
    safetensors files: scored in float32 the weights change dtype, so each rank loads shard by
    shard, and must read its vocabulary rows from the embedding."""
    from tdsdist_testkit import save_tiny_pair
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tied_sharded")
    pair = save_tiny_pair(
        root,
        vocab_size=301,
        seed=6,
        num_heads=3,
        num_kv_heads=3,
        hidden_size=48,
        model_vocab_size=320,
        tie_embeddings=True,
    )
    for folder in pair:
        model = AutoModelForCausalLM.from_pretrained(folder)
        (folder / "model.safetensors").unlink()
        model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
        assert len(list(folder.glob("*.safetensors"))) > 2
    return pair


@pytest.mark.slow
def test_tensor_parallel_loads_a_sharded_tied_checkpoint(tied_sharded_pair, tmp_path: Path) -> None:
    """bf16 files scored in float32: each rank loads shard by shard (`tp.load_sharded_for_tp`);
    the result equals one process loading the whole model."""
    single, tp = tmp_path / "single.zarr", tmp_path / "tp.zarr"
    result = CliRunner().invoke(main, ["score", *args(tied_sharded_pair, single)])
    assert result.exit_code == 0, result.output
    run = launch(args(tied_sharded_pair, tp, "--tp", "2"), NPROC=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Loading" in run.stderr and "checkpoint shards" in run.stderr  # DeepSpeed, per file
    assert_same(tp, single)


def generate_args(pair, out: Path, *extra: str) -> list[str]:
    flags = dict(top_k=5, limit=5, unit_size=2, batch_size=2, max_new_tokens=10, dist_timeout=300)
    return cli_args(None, pair[0], out=out, store=out.with_suffix(".zarr"), **flags, extra=extra)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling",
    [[], ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]],
    ids=["greedy", "sampled"],
)
def test_generate_tensor_parallel_equals_one_process(
    three_head_pair, tmp_path: Path, sampling
) -> None:
    """`generate --tp 2` (AutoTP body, vocabulary-parallel projection; greedy by a global
    argmax, sampling from the gathered step logits) writes the same answers as one process, and
    with --base the pair head completes the same store."""
    single, tp = tmp_path / "single.json", tmp_path / "tp.json"
    extra = [*sampling, "--base", str(three_head_pair[1])]
    result = CliRunner().invoke(main, ["generate", *generate_args(three_head_pair, single, *extra)])
    assert result.exit_code == 0, result.output
    run = launch(generate_args(three_head_pair, tp, "--tp", "2", *extra), NPROC=2, JOB="generate")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world 2 = tp 2 x dp 1" in run.stderr
    answers = [json.loads(p.read_text()) for p in (single, tp)]
    assert [r["output"] for r in answers[0]] == [r["output"] for r in answers[1]]
    got, want = (
        Store(tp.with_suffix(".zarr"), mode="r"),
        Store(single.with_suffix(".zarr"), mode="r"),
    )
    assert got.committed().all() and want.committed().all()
    np.testing.assert_array_equal(got.read("positions/token_id"), want.read("positions/token_id"))
    rows = want.valid_rows()
    for name in ("aligned/top_ids", "aligned/rank", "base/rank"):
        np.testing.assert_array_equal(got.read(name)[rows], want.read(name)[rows], err_msg=name)
    for name in ("aligned/top_logprobs", "aligned/logprob", "aligned/entropy", "positions/js"):
        assert_float32_close(got.read(name)[rows], want.read(name)[rows], err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["--tp", "2"], []], ids=["tp 2", "dp 2"])
def test_nudge_under_torchrun_equals_one_process(three_head_pair, tmp_path: Path, layout) -> None:
    """`nudge` with tp 2 (vocabulary-parallel rule: the base row's normaliser by all-reduce) or
    two data-parallel ranks claiming units: the answers, flags and store of one process."""
    single, ranks = tmp_path / "single.json", tmp_path / "ranks.json"
    extra = ["--base", str(three_head_pair[1]), "--nudge-threshold", "0.5"]
    result = CliRunner().invoke(main, ["nudge", *generate_args(three_head_pair, single, *extra)])
    assert result.exit_code == 0, result.output
    run = launch(generate_args(three_head_pair, ranks, *extra, *layout), NPROC=2, JOB="nudge")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"world 2 = tp {2 if layout else 1} x dp {1 if layout else 2}" in run.stderr
    answers = [json.loads(p.read_text()) for p in (single, ranks)]
    assert answers[0] == answers[1]
    got, want = (Store(p.with_suffix(".zarr"), mode="r") for p in (ranks, single))
    assert 0 < want.read("positions/nudged")[want.valid_rows()].mean() < 1
    for name in ("positions/token_id", "positions/nudged", "aligned/top_ids", "base/rank"):
        np.testing.assert_array_equal(got.read(name), want.read(name), err_msg=name)
    for name in ("aligned/logprob", "base/entropy", "positions/js"):
        assert_float32_close(got.read(name), want.read(name), err_msg=name)
