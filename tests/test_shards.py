"""Store format 4: one shard file per per-position array and work unit (`tdsdist/store/`).

Each unit's shard is its own file, written whole in one write without reading anything back;
inner chunks never written (padding, unscored units) cost nothing; a damaged inner chunk or shard
index is one error naming the array and the unit; the fast reader reads shards as zarr does; and
writing a unit holds one array's shard beside the unit's rows, not a second copy of the unit.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis.chunks import BlockReader
from tdsdist.store import DamagedChunk, Store, layout, shard_positions
from tdsdist.store.integrity import damaged_units

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import build  # noqa: E402

CHUNK = 512  # inner chunk: several per shard
LENGTHS = [3000, 2500, 4000, 10]  # unit_size 1; shard = 4000 rounded up to 512 = 4096
COMMIT = [True, False, True, True]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Store:
    path = tmp_path_factory.mktemp("shards") / "s.zarr"
    return build(path, LENGTHS, commit=COMMIT, unit_size=1, chunk=CHUNK)


def shard_file(store: Store, name: str, unit: int) -> Path:
    suffix = "/0" if store.root[name].ndim == 2 else ""
    return store.path / name / "c" / f"{unit}{suffix}"


def shard_index(path: Path, chunks: int) -> np.ndarray:
    """`[chunks, 2]` offset and length of each inner chunk (the index at the end of the file)."""
    raw = path.read_bytes()[-(16 * chunks + 4) : -4]
    return np.frombuffer(raw, "<u8").reshape(chunks, 2)


def test_shard_length_is_the_largest_unit_rounded_to_the_inner_chunk() -> None:
    lengths = np.array([3, 5, 4000, 200, 1, 1, 1])
    assert shard_positions(lengths, unit_size=2, chunk=1024) == 5120
    offsets, starts = layout(lengths, unit_size=2, chunk=1024, shard=5120)
    assert starts.tolist() == [0, 5120, 10240, 15360, 20480]
    assert offsets.tolist() == [0, 3, 5120, 9120, 10240, 10241, 15360]
    assert shard_positions(np.array([1, 1]), unit_size=1, chunk=4096) == 4096
    assert shard_positions(np.zeros(0, np.int32), unit_size=4, chunk=4096) == 4096


def test_one_file_per_array_and_unit_and_empty_chunks_cost_nothing(sharded: Store) -> None:
    assert sharded.format_version == 4 and sharded.meta["shard_positions"] == 4096
    assert sharded.meta["unit_starts"] == [0, 4096, 8192, 12288, 16384]
    committed = {str(u) for u, done in enumerate(COMMIT) if done}
    written = [n for n in sharded.array_names() if (sharded.path / n / "c").is_dir()]
    assert len(written) >= 15  # the arrays `synthetic.build` fills
    for name in written:
        files = {p.name for p in (sharded.path / name / "c").iterdir()}
        # token_id is written at creation (every unit); the rest by each committed unit
        assert files == ({"0", "1", "2", "3"} if name == "positions/token_id" else committed), name
    index = shard_index(shard_file(sharded, "base/rank", 0), 4096 // CHUNK)
    written = index[:, 0] != 2**64 - 1
    assert written.tolist() == [True] * 6 + [False] * 2  # 3,000 rows: 6 inner chunks of 512
    index = shard_index(shard_file(sharded, "base/rank", 3), 4096 // CHUNK)
    assert (index[:, 0] != 2**64 - 1).sum() == 1  # a 10-row unit stores one inner chunk


def test_block_reader_reads_shards_as_zarr_does(sharded: Store) -> None:
    reader = BlockReader(sharded)
    total = int(sharded.meta["unit_starts"][-1])
    for name in sharded.array_names():
        for rows in (slice(0, total), slice(700, 9000), slice(4096, 4100), slice(12290, 12300)):
            want = sharded.read(name, rows)
            got = reader.read(name, rows)
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), name
        assert reader.layouts[name] is not None and reader.layouts[name].shard == 4096, name


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_inner_chunk_or_index_is_named_and_a_rewrite_replaces_it(
    sharded: Store, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(sharded.path, tmp_path / "s.zarr")
    store = Store(tmp_path / "s.zarr")
    before = {name: store.read(name) for name in ("base/top_logprobs", "aligned/rank")}
    logprobs = shard_file(store, "base/top_logprobs", 2)
    offset, length = shard_index(logprobs, 4096 // CHUNK)[3]
    flip(logprobs, int(offset + length // 2))  # the 4th inner chunk of unit 2
    flip(shard_file(store, "aligned/rank", 0), -10)  # unit 0's shard index
    store = Store(store.path, mode="r+")
    with pytest.raises(DamagedChunk, match=r"base/top_logprobs: damaged data in unit\(s\) 2 "):
        store.read("base/top_logprobs", slice(8192, 12288))
    with pytest.raises(DamagedChunk, match=r"aligned/rank: damaged data in unit\(s\) 0 "):
        BlockReader(store).read("aligned/rank", slice(0, 100))
    with pytest.raises(DamagedChunk, match=r"unit\(s\) 2 "):
        BlockReader(store).read("base/top_logprobs", slice(9900, 10000))
    np.testing.assert_array_equal(  # the other inner chunks of the damaged shard still read
        BlockReader(store).read("base/top_logprobs", slice(8192, 9000)),
        before["base/top_logprobs"][8192:9000],
    )
    assert damaged_units(store) == {0: ["aligned/rank"], 2: ["base/top_logprobs"]}
    units = store.units()
    for name, unit in (("base/top_logprobs", 2), ("aligned/rank", 0)):  # what a re-score does
        rows = slice(units[unit].start, units[unit].start + units[unit].positions)
        store.write_rows(units[unit], {name: before[name][rows]})
    assert damaged_units(store) == {}
    for name, values in before.items():
        np.testing.assert_array_equal(store.read(name), values, err_msg=name)


def test_a_unit_is_one_write_per_array_and_reads_nothing_back(
    sharded: Store, monkeypatch, tmp_path
) -> None:
    import shutil

    shutil.copytree(sharded.path, tmp_path / "s.zarr")
    store = Store(tmp_path / "s.zarr")
    unit = store.units()[0]
    names = ["aligned/top_logprobs", "base/rank", "published/jaccard"]
    arrays = {n: store.read(n, slice(unit.start, unit.start + unit.positions)) for n in names}
    calls: list[tuple[str, str]] = []
    real_set, real_get = zarr.storage.LocalStore.set, zarr.storage.LocalStore.get

    async def spy_set(self, key, value, *args, **kwargs):
        calls.append(("set", key))
        return await real_set(self, key, value, *args, **kwargs)

    async def spy_get(self, key, *args, **kwargs):
        found = await real_get(self, key, *args, **kwargs)
        calls.append(("get" if found is None else "read", key))  # "read": bytes came back
        return found

    monkeypatch.setattr(zarr.storage.LocalStore, "set", spy_set)
    monkeypatch.setattr(zarr.storage.LocalStore, "get", spy_get)
    store.write_rows(unit, arrays)
    suffix = {"aligned/top_logprobs": "/0"}
    keys = [f"{n}/c/0{suffix.get(n, '')}" for n in names]
    # zarr looks for the old shard (removed first: nothing comes back), then writes it once
    assert [(op, key) for op, key in calls if "/c/" in key] == [
        (op, key) for key in keys for op in ("get", "set")
    ]
    monkeypatch.undo()
    for name, values in arrays.items():
        np.testing.assert_array_equal(store.read(name, slice(0, unit.positions)), values)


@pytest.mark.parametrize("examples", [256, 1024])
def test_writing_a_large_unit_holds_one_shard_beside_its_rows(tmp_path, examples: int) -> None:
    """Writing a unit of `examples` answers of 40 tokens allocates about one array's padded
    shard (the largest, `[P, k]` float32) at a time, not a second copy of the unit's rows."""
    lengths = [40] * examples
    store = build(tmp_path / "big.zarr", lengths, unit_size=examples, commit=[False])
    store = Store(store.path)
    unit = store.units()[0]
    rng = np.random.default_rng(0)
    arrays = {}
    for name in store.array_names():
        arr = store.root[name]
        arrays[name] = rng.integers(0, 50, (unit.positions,) + arr.shape[1:]).astype(arr.dtype)
    unit_bytes = sum(v.nbytes for v in arrays.values())
    largest = (
        max(v.nbytes for v in arrays.values()) * store.meta["shard_positions"] // unit.positions
    )
    tracemalloc.start()
    store.write_rows(unit, arrays)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the padded shard, its compressed bytes (no bigger), zarr's buffers: under 3x one shard,
    # and far under the unit's rows (29 arrays, about 120 B per position here at k=5)
    assert peak < 3 * largest + (1 << 20), (peak, largest, unit_bytes)
    assert peak < unit_bytes / 2, (peak, unit_bytes)


TORN_WRITE = """
import os, runpy, signal, sys
from zarr.storage import LocalStore

real_set, kill_at, seen = LocalStore.set, int(os.environ["KILL_AT_SHARD"]), []


async def torn_set(self, key, value, *args, **kwargs):
    '''The `kill_at`-th shard unit 1 writes: half its bytes land at the final path (a file
    system without atomic rename), then SIGKILL.'''
    shard = key.split("/c/")[1].split("/")[0] if "/c/" in key else None
    if shard == "1" and not key.startswith(("units/", "positions/token_id", "contexts/")):
        seen.append(key)
        if len(seen) == kill_at:
            path = os.path.join(str(self.root), key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = value.to_bytes()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return await real_set(self, key, value, *args, **kwargs)


LocalStore.set = torn_set
sys.argv = ["tdsdist.score", *sys.argv[1:]]
runpy.run_module("tdsdist.score", run_name="__main__")
"""


def test_sigkill_during_a_shard_write_then_resume_is_identical(tiny_pair, tmp_path) -> None:
    import os
    import subprocess

    def score(store: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
        args = cli_args(
            None, *tiny_pair, store=store, top_k=5, limit=6, unit_size=2, max_output_tokens=30
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_SHARD": str(kill_at or 0)}
        code = (
            TORN_WRITE
            if kill_at
            else "import runpy, sys; sys.argv[0] = 'tdsdist.score'; runpy.run_module('tdsdist.score', run_name='__main__')"
        )
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )

    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    assert score(clean).returncode == 0
    first = score(killed, kill_at=10)  # the 10th shard of the second unit
    assert first.returncode == -9, first.stderr[-2000:]
    store = Store(killed, mode="r")
    assert store.committed().tolist() == [True, False, False]
    torn = [
        name
        for name in store.array_names()
        if any((killed / name / "c").glob("1*")) and name != "positions/token_id"
    ]
    assert len(torn) == 10  # nine whole shards of unit 1 and the torn one, all uncommitted
    second = score(killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "1 already committed, 2 to do" in second.stderr
    a, b = Store(killed, mode="r"), Store(clean, mode="r")
    assert a.committed().all() and damaged_units(a) == {}
    for name in b.array_names():
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


SHARD_SPY = """
import os

if os.environ.get("SHARD_LOG"):
    import zarr.storage

    _real_set = zarr.storage.LocalStore.set

    async def _logged_set(self, key, value, *args, **kwargs):
        with open(f"{os.environ['SHARD_LOG']}.{os.getpid()}", "a") as log:
            log.write(f"{os.environ.get('RANK', '-')} {self.root} {key}\\n")
        return await _real_set(self, key, value, *args, **kwargs)

    zarr.storage.LocalStore.set = _logged_set
"""


def test_data_parallel_ranks_write_every_unit_once_and_share_no_shard(tiny_pair, tmp_path) -> None:
    """torchrun dp=2 on one store: every write of every process is logged (a `sitecustomize`
    on the workers' path); each unit's shards come from one process, each exactly once."""
    import os

    from test_distributed import args, launch

    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SHARD_SPY)
    store = tmp_path / "dp.zarr"
    path = os.pathsep.join([str(spy), os.environ.get("PYTHONPATH", "")])
    result = launch(
        args(tiny_pair, store),
        env={"PYTHONPATH": path, "SHARD_LOG": str(tmp_path / "log")},
        NPROC=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2 = tp 1 x dp 2" in result.stderr
    s = Store(store, mode="r")
    names = [n for n in s.array_names() if n != "positions/token_id"]  # also written at creation
    writes: dict[tuple[str, int], list[str]] = {}
    for log in tmp_path.glob("log.*"):
        pid = log.suffix
        for line in log.read_text().splitlines():
            rank, root, key = line.split(" ")
            if Path(root) != store or "/c/" not in key:
                continue
            name, shard = key.split("/c/")
            if name in names:
                assert rank in ("0", "1"), line
                writes.setdefault((name, int(shard.split("/")[0])), []).append(pid)
    units = len(s.units())
    assert units == 6 and s.committed().all()
    assert sorted(writes) == sorted((n, u) for n in names for u in range(units))
    assert all(len(pids) == 1 for pids in writes.values()), writes  # each shard written once
    for u in range(units):  # a unit's shards all come from the process that scored it
        assert len({writes[(n, u)][0] for n in names}) == 1, u
    for name in s.array_names():  # one file per unit, nothing left half-written
        assert sorted(p.name for p in (store / name / "c").iterdir()) == [
            str(u) for u in range(units)
        ]


def test_a_lost_shard_is_damage_and_a_unit_of_fill_still_writes_its_shard(
    sharded: Store, tmp_path
) -> None:
    import shutil

    shutil.copytree(sharded.path, tmp_path / "s.zarr")
    store = Store(tmp_path / "s.zarr")
    shard_file(store, "base/rank", 2).unlink()  # a committed unit's shard, lost
    store = Store(store.path)
    with pytest.raises(DamagedChunk, match=r"base/rank: chunk file c/2 of committed unit 2"):
        store.read("base/rank", slice(8192, 9000))
    with pytest.raises(DamagedChunk, match="committed unit 2"):
        BlockReader(store).read("base/rank", slice(8000, 9000))
    assert store.read("base/rank", slice(4096, 4200)).tolist() == [0] * 104  # unit 1: pending
    unit = store.units()[1]
    nan = np.full(unit.positions, np.nan, np.float32)  # every row equals the fill value
    store.write_rows(unit, {"positions/kl": nan})
    store.mark_committed(unit)
    assert shard_file(store, "positions/kl", 1).exists()
    store = Store(store.path, mode="r")
    assert np.isnan(BlockReader(store).read("positions/kl", slice(4096, 8192))).all()
