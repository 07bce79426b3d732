"""Tensor parallelism (`tdsdist.parallel.tp`): DeepSpeed AutoTP for the body, our vocabulary-split head.

The end-to-end tests run `tests/tp_worker.py` under the real launcher (`torchrun --standalone`,
gloo, one thread per rank) on a tiny Llama with 3 attention heads, which tp=2 does not divide, and
a 301-token vocabulary padded to 320 rows, which tp=2 does not divide either; they compare with a
single process. They are slow: each run is ~15-30 s on 2 cores, and the very first run on a machine
also compiles DeepSpeed's CPU all-reduce (~2 min, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tdsdist_testkit import (
    assert_float32_close,
    default_corpus,
    make_tiny_llama,
    train_tiny_tokenizer,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.engine.head import VocabShard, chunk_rows, vocab_slice
from tdsdist.engine.scorer import ContextAnswer, Scorer
from tdsdist.errors import TdsError
from tdsdist.parallel.tp import (
    SHM_BUFFER_PREFIX,
    ShmBufferCleanup,
    VocabParallelHead,
    configure_shm_allreduce,
    install_vocab_slice,
    shm_buffer_names,
)

WORKER = str(Path(__file__).resolve().parent / "tp_worker.py")
VOCAB = 301  # tokenizer length
MODEL_VOCAB = 320  # rows of the models' embeddings and heads (padding past the tokenizer)
TOP_K = 5
CHUNK_BYTES = 4 * VOCAB * 7  # 7 rows of logits per chunk: several chunks per batch
MAX_TOKENS = 96  # several right-padded batches
RUN_TIMEOUT_S = 600  # generous: the first run on a machine compiles DeepSpeed's all-reduce


# ------------------------------------------------------------------------------------------------
# Pieces, in one process
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [8, 9, 301, 32000, 128256])
@pytest.mark.parametrize("tp_size", [1, 2, 3, 8])
def test_vocab_slices_are_balanced_and_cover_the_vocabulary(vocab_size: int, tp_size: int) -> None:
    slices = [vocab_slice(vocab_size, r, tp_size) for r in range(tp_size)]
    assert slices[0][0] == 0 and slices[-1][1] == vocab_size
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [end - start for start, end in slices]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_vocab_slice_rejects_a_bad_rank_or_a_tiny_vocabulary() -> None:
    with pytest.raises(ValueError, match="not in"):
        vocab_slice(301, 2, 2)
    with pytest.raises(ValueError, match="cannot split"):
        vocab_slice(7, 0, 8)


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 301 * 7, 4 * 301 * 7 + 5, 256 << 20])
def test_every_rank_takes_the_same_rows_per_chunk(chunk_bytes: int) -> None:
    """With 151 and 150 local rows, rows per chunk must still agree between ranks (collectives)."""
    want = chunk_rows(VOCAB, chunk_bytes)
    for rank in range(2):
        start, end = vocab_slice(VOCAB, rank, 2)
        assert VocabShard(start, None, VOCAB).chunk_rows(end - start, chunk_bytes) == want


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_install_vocab_slice_copies_the_rows_and_leaves_the_embeddings(tie: bool) -> None:
    tokenizer = train_tiny_tokenizer(default_corpus(), VOCAB)
    model = make_tiny_llama(tokenizer, seed=0, vocab_size=MODEL_VOCAB, tie_embeddings=tie)
    full = model.get_output_embeddings().weight.detach().clone()
    embed = model.get_input_embeddings().weight
    head = install_vocab_slice(model, 151, 301)
    assert model.get_output_embeddings() is head and isinstance(head, VocabParallelHead)
    torch.testing.assert_close(head.weight, full[151:301], rtol=0, atol=0)
    assert model.get_input_embeddings().weight is embed  # whole and untouched, tied or not
    with torch.no_grad():
        embed.add_(1.0)  # a copy, not a view of the (possibly tied) matrix
    torch.testing.assert_close(head.weight, full[151:301], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="split by vocabulary"):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    with pytest.raises(TdsError, match="fewer than"):
        install_vocab_slice(make_tiny_llama(tokenizer, seed=0), 0, VOCAB + 1)


def test_shm_buffer_cleanup_removes_only_this_jobs_new_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29123")
    ours = f"{SHM_BUFFER_PREFIX}_{os.getuid()}_127.0.0.1_29123_"
    (tmp_path / f"{ours}9").touch()  # there before: not ours to remove
    cleanup = ShmBufferCleanup(tmp_path)
    for name in (f"{ours}0", f"{ours}1", f"{SHM_BUFFER_PREFIX}_{os.getuid()}_127.0.0.1_29999_0"):
        (tmp_path / name).touch()
    (tmp_path / "unrelated").touch()
    assert cleanup() == [f"{ours}0", f"{ours}1"]
    assert cleanup() == []  # idempotent
    assert shm_buffer_names(tmp_path) == {
        f"{ours}9",
        f"{SHM_BUFFER_PREFIX}_{os.getuid()}_127.0.0.1_29999_0",
    }


@pytest.mark.parametrize(
    ("world", "local", "tp", "usable"),
    [(2, 2, 2, True), (8, 8, 8, True), (4, 4, 2, False), (4, 2, 2, False), (1, 1, 1, True)],
)
def test_shm_allreduce_only_where_the_group_is_the_world(
    monkeypatch, world, local, tp, usable
) -> None:
    """DeepSpeed's CPU all-reduce ignores the group and reduces over the world."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    monkeypatch.setenv("LOCAL_SIZE", "99")
    assert configure_shm_allreduce(tp) is usable
    assert os.environ.get("LOCAL_SIZE") == (str(local) if usable else None)


# ------------------------------------------------------------------------------------------------
# Through torchrun
# ------------------------------------------------------------------------------------------------


def make_sequences(tokenizer, prefix: list[int]) -> list[ContextAnswer]:
    """Corpus lines cut in two after `prefix`: varied lengths, so batches are right-padded."""
    sequences = []
    for line in default_corpus()[:12]:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        cut = max(1, len(ids) // 2)
        sequences.append(ContextAnswer(prefix + ids[:cut], ids[cut:]))
    return sequences


@pytest.fixture(scope="module")
def tp_models(tmp_path_factory) -> tuple[list[Path], list[int]]:
    """(model folders, tokens of a shared prefix): an untied model and a tied one, 3 heads each."""
    root = tmp_path_factory.mktemp("tp")
    tokenizer = train_tiny_tokenizer(default_corpus(), VOCAB)
    folders = []
    for name, seed, tie in (("aligned", 0, False), ("base", 1, True)):
        model = make_tiny_llama(
            tokenizer,
            seed=seed,
            num_heads=3,
            num_kv_heads=3,
            hidden_size=48,
            vocab_size=MODEL_VOCAB,
            tie_embeddings=tie,
        )
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders.append(root / name)
    return folders, tokenizer("You are a helpful assistant.\n")["input_ids"]


def write_input(path: Path, sequences: list[ContextAnswer], prefix: list[int]) -> Path:
    np.savez(
        path,
        tokens=np.array([t for s in sequences for t in s.context + s.answer], dtype=np.int64),
        context_lengths=np.array([len(s.context) for s in sequences], dtype=np.int64),
        answer_lengths=np.array([len(s.answer) for s in sequences], dtype=np.int64),
        prefix=np.array(prefix, dtype=np.int64),
        vocab_size=np.array(VOCAB),
        top_k=np.array(TOP_K),
        chunk_bytes=np.array(CHUNK_BYTES),
        max_tokens=np.array(MAX_TOKENS),
    )
    return path


def reference(folders: list[Path], sequences: list[ContextAnswer]) -> list[dict[str, np.ndarray]]:
    """Single-process `Scorer.score` of each model; later models get the first one's top-k."""
    results, support = [], None
    for folder in folders:
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        scorer = Scorer.for_model(model, VOCAB, TOP_K, CHUNK_BYTES, MAX_TOKENS, torch.device("cpu"))
        results.append(scorer.score(sequences, support))
        if support is None:
            bounds = np.cumsum([0] + [len(s.answer) for s in sequences])
            support = [results[0]["top_ids"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return results


def run_torchrun(nproc: int, tp: int, input_path: Path, output: Path, folders: list[Path]) -> str:
    """Run the worker under torchrun; kill the whole process group if it hangs."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc_per_node", str(nproc), WORKER, str(input_path), str(output), str(tp)]
    argv += [str(f) for f in folders]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"torchrun hung for {RUN_TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-4000:]
    return log


def in_sequence_order(
    got: np.ndarray, order: list[int], sequences: list[ContextAnswer]
) -> np.ndarray:
    """The workers' rows (grouped by data-parallel group) back in the order of the sequences."""
    bounds = np.cumsum([0] + [len(sequences[i].answer) for i in order])
    parts = {i: got[a:b] for i, a, b in zip(order, bounds[:-1], bounds[1:])}
    return np.concatenate([parts[i] for i in range(len(sequences))])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("nproc", "tp", "cache_prefix"),
    [(2, 2, True), (4, 2, False)],
    ids=["tp2-prefix-cache", "tp2xdp2"],
)
def test_tensor_parallel_scores_equal_one_process(
    tp_models, tmp_path, nproc: int, tp: int, cache_prefix: bool
) -> None:
    """Slow (torchrun, DeepSpeed). tp2: DeepSpeed's shared-memory all-reduce serves the body, and
    the contexts' shared prefix is cached (per rank: its own heads' keys and values). tp2xdp2: two
    groups score different sequences, so that all-reduce (which ignores the group) must be off;
    with it on, this run deadlocks. The reference is one process without a prefix cache."""
    folders, prefix = tp_models
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    sequences = make_sequences(tokenizer, prefix)
    input_path = write_input(tmp_path / "input.npz", sequences, prefix if cache_prefix else [])
    shm_before = shm_buffer_names()
    output = tmp_path / "out.npz"
    run_torchrun(nproc, tp, input_path, output, folders)
    assert shm_buffer_names() - shm_before == set(), "DeepSpeed's /dev/shm buffers were left"

    got = np.load(output)
    assert int(got["fact/shm_allreduce"]) == (1 if nproc == tp else 0)
    # Removed as soon as every rank had mapped them, not only at exit (which a kill would skip).
    assert int(got["fact/shm_buffers_removed"]) == (nproc if nproc == tp else 0)
    assert int(got["fact/shm_buffers_left"]) == 0
    order = got["order"].tolist()
    assert sorted(order) == list(range(len(sequences)))
    for m, want in enumerate(reference(folders, sequences)):
        assert str(got[f"fact/m{m}/head_type"]) == "VocabParallelHead"
        assert int(got[f"fact/m{m}/head_rows"]) == 151  # rank 0's rows of 301
        assert int(got[f"fact/m{m}/q_proj_rows"]) == 2 * 16  # 2 of the 3 heads on rank 0
        assert int(got[f"fact/m{m}/embed_rows"]) == MODEL_VOCAB  # AutoTP leaves it whole
        assert set(want) == {k.split("/", 1)[1] for k in got.files if k.startswith(f"m{m}/")}
        for key, value in want.items():
            tp_value = in_sequence_order(got[f"m{m}/{key}"], order, sequences)
            if key in ("top_ids", "rank"):
                np.testing.assert_array_equal(tp_value, value, err_msg=f"m{m}/{key}")
            else:
                assert_float32_close(tp_value, value, err_msg=f"m{m}/{key}")


def test_shard_by_shard_loading_only_when_the_dtype_changes(tmp_path: Path) -> None:
    """Memory-mapped files in the wanted dtype are cheaper to load whole (page cache shared by the
    node's ranks); a conversion is cheaper shard by shard (python -m tools.bench.tp_load)."""
    from tdsdist.parallel.tp_load import checkpoint_dtype, loads_shard_by_shard

    tokenizer = train_tiny_tokenizer(default_corpus(), VOCAB)
    model = make_tiny_llama(tokenizer, seed=0, vocab_size=MODEL_VOCAB)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert checkpoint_dtype(tmp_path / "bf16") == torch.bfloat16
    assert not loads_shard_by_shard(tmp_path / "bf16", torch.bfloat16)
    assert loads_shard_by_shard(tmp_path / "bf16", torch.float32)
    assert not loads_shard_by_shard("some-org/some-model", torch.float32)  # not a local folder
    assert checkpoint_dtype(tmp_path) is None
