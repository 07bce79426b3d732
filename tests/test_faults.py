"""Faults a user meets on a shared cluster, run against real tiny stores through the real CLI (a
subprocess each): every one ends in the exact outcome (one error line, exit code 2, or a named
damage), and the store's bytes are as before unless the command's job is to change them."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tdsdist_testkit.cli_args import cli_args

from tdsdist.store import BYTES_PER_POSITION

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
CLI = [sys.executable, "-c", "from tdsdist.cli import entry; entry()"]


def tdsdist(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


def score_args(pair, store: Path) -> list[str]:
    return cli_args(
        "score", *pair, store=store, top_k=5, limit=6, unit_size=2, max_output_tokens=16
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of stderr (the accelerator notice of deepspeed aside)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or the file itself) -> its SHA-256."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("faults") / "s.zarr"
    result = tdsdist(*score_args(tiny_pair, store))
    assert result.returncode == 0, result.stderr
    return store


@pytest.fixture
def store(scored, tmp_path) -> Path:
    copy = tmp_path / "c.zarr"
    shutil.copytree(scored, copy)
    return copy


def chunk(store: Path, array: str) -> Path:
    path = store / array / "c" / "0"
    return path / "0" if path.is_dir() else path


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


# --- --overwrite and outputs replace only what tdsdist wrote -------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_store(tiny_pair, tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    before = digest(folder)
    result = tdsdist(*score_args(tiny_pair, folder), "--overwrite")
    assert result.returncode == 2
    assert error_line(result).startswith(f"error: {folder}: --overwrite replaces only a tdsdist")
    assert digest(folder) == before


def test_overwrite_refuses_a_regular_file(tiny_pair, tmp_path) -> None:
    file = tmp_path / "data.json"
    file.write_text("[]")
    result = tdsdist(*score_args(tiny_pair, file), "--overwrite")
    assert result.returncode == 2 and "and this is not a folder" in error_line(result)
    assert file.read_text() == "[]"


def test_overwrite_replaces_a_store(tiny_pair, store) -> None:
    result = tdsdist(*score_args(tiny_pair, store), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (store / "zarr.json").exists()


def test_export_refuses_to_replace_a_file_it_did_not_write(store, tmp_path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    result = tdsdist("export", store, "-o", mine)
    assert result.returncode == 2 and "is not a Parquet file" in error_line(result)
    assert mine.read_text() == "keep me"
    out = tmp_path / "p.parquet"
    assert tdsdist("export", store, "-o", out).returncode == 0
    assert tdsdist("export", store, "-o", out).returncode == 0  # its own file: replaced


# --- every array is checked ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "array", ["positions/kl", "aligned/top_ids", "base/logprob", "published/jaccard"]
)
def test_a_deleted_chunk_is_named_by_every_reader_and_repaired(tiny_pair, store, array) -> None:
    before = digest(store)
    chunk(store, array).unlink()
    readers = [["show", store, "--example", "0"], ["analyze", store]]
    if array.startswith("published/"):  # read by `export` (`show` and `analyze` read others)
        readers = [["export", store, "-o", store.parent / "x.parquet"]]
    if array == "aligned/top_ids":  # the top-k table: `show` lists it (format 3 analyzes without)
        readers = readers[:1]
    for command in readers:
        result = tdsdist(*command)
        assert result.returncode == 2
        assert f"{array}: chunk file c/0 of committed unit 0 is missing" in error_line(result)
    checked = tdsdist("verify", store)
    assert checked.returncode == 1 and f"unit 0: damaged {array}" in checked.stdout
    assert tdsdist("verify", store, "--repair").returncode == 0
    assert tdsdist(*score_args(tiny_pair, store)).returncode == 0
    after = digest(store)
    assert after[chunk(store, array).relative_to(store).as_posix()]  # re-scored: back on disk
    arrays = [k for k in before if not k.endswith("zarr.json")]  # the root's timing changes
    assert {k: after[k] for k in arrays} == {k: before[k] for k in arrays}  # the same bytes


@pytest.mark.parametrize(
    "array", ["examples/offset", "examples/length", "examples/id", "units/committed"]
)
def test_a_flipped_byte_in_a_table_is_named(store, array) -> None:
    flip(chunk(store, array))
    before = digest(store)
    result = tdsdist("show", store, "--example", "0")
    assert result.returncode == 2
    assert error_line(result) == (
        f"error: {store}: {array}: damaged (checksum mismatch); it is written once with the"
        f" store: restore the store from a copy (`tdsdist verify {store}` lists the damage)"
    )
    checked = tdsdist("verify", store)
    assert checked.returncode == 1 and f"{array}: damaged" in checked.stdout
    assert digest(store) == before


def test_a_flipped_byte_in_contexts_is_named(store) -> None:
    flip(chunk(store, "contexts/aligned/ids"))
    checked = tdsdist("verify", store)
    assert checked.returncode == 1 and "contexts/aligned/ids: damaged" in checked.stdout


@pytest.mark.parametrize(
    "meta", ["zarr.json", "aligned/rank/zarr.json", "units/committed/zarr.json"]
)
def test_a_truncated_zarr_json_is_one_line(tiny_pair, store, meta) -> None:
    path = store / meta
    path.write_bytes(path.read_bytes()[:50])
    before = digest(store)
    want = (
        f"error: {path}: damaged store metadata (not a complete zarr.json, e.g. truncated);"
        " restore this file or the whole store from a copy"
    )
    for command in (
        ["show", store, "--example", "0"],
        ["analyze", store],
        ["export", store, "-o", store.parent / "x.parquet"],
        ["verify", store],
        score_args(tiny_pair, store),
    ):
        result = tdsdist(*command)
        assert result.returncode == 2 and error_line(result) == want, command
    assert digest(store) == before


# --- models and the store location, before anything is made ------------------------------------


def test_a_file_as_aligned_model_is_one_line_and_makes_no_store(tiny_pair, tmp_path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    new = tmp_path / "n.zarr"
    args = score_args(tiny_pair, new)
    args[args.index("--aligned") + 1] = str(file)
    result = tdsdist(*args)
    assert result.returncode == 2 and "is a file, not a model folder" in error_line(result)
    assert not new.exists()


def test_a_model_folder_without_weights_makes_no_store(tiny_pair, tmp_path) -> None:
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_pair[0], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    new = tmp_path / "n.zarr"
    args = score_args(tiny_pair, new)
    args[args.index("--aligned") + 1] = str(folder)
    result = tdsdist(*args)
    assert result.returncode == 2 and "holds no weights" in error_line(result)
    assert not new.exists()


@pytest.mark.parametrize("name", ["nope/model", "./nope", "a/b/c", "someone/model"])
def test_a_missing_model_path_never_waits_for_the_hub(tiny_pair, tmp_path, name) -> None:
    args = score_args(tiny_pair, tmp_path / "n.zarr")
    args[args.index("--aligned") + 1] = name
    result = tdsdist(*args)
    line = error_line(result)
    assert result.returncode == 2 and line.startswith(f"error: {name}: no such model folder")
    if name == "someone/model":  # a hub id: HF_HUB_OFFLINE is set in ENV
        assert "hub is unreachable" in line
    assert not (tmp_path / "n.zarr").exists()


# --- read-only folders and a full disk ----------------------------------------------------------


def test_an_immutable_store_is_one_line_and_keeps_its_bytes(tiny_pair, store) -> None:
    import zarr

    zarr.open_group(store, mode="r+")["units/committed"][1] = 0  # one unit to do
    before = digest(store)
    locked = [store, store / "units/committed/c"]
    if subprocess.run(["chattr", "+i", *map(str, locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (root ignores chmod, so nothing to test)")
    try:
        result = tdsdist(*score_args(tiny_pair, store))
    finally:
        subprocess.run(["chattr", "-i", *map(str, locked)], check=True)
    assert result.returncode == 2 and "cannot write here" in error_line(result)
    assert "already committed" not in result.stderr  # refused before any model loads
    assert digest(store) == before


def _immutable(folder: Path) -> None:
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (root ignores chmod, so nothing to test)")


@pytest.mark.parametrize("command", ["score", "generate"])
def test_an_immutable_parent_is_one_line_before_loading(tiny_pair, tmp_path, command) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    args = score_args(tiny_pair, parent / "s.zarr")
    if command == "generate":
        args = cli_args("generate", tiny_pair[0], out=parent / "a.json", limit=2)
    _immutable(parent)
    try:
        result = tdsdist(*args)
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    line = error_line(result)
    assert result.returncode == 2 and line.startswith(f"error: {parent}: cannot write here")
    assert not list(parent.iterdir())


def test_a_store_under_a_file_is_one_line(tiny_pair, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    result = tdsdist(*score_args(tiny_pair, tmp_path / "f" / "s.zarr"))
    assert result.returncode == 2
    assert error_line(result).endswith(f"{tmp_path / 'f'} is a file, not a folder")


def test_a_full_disk_is_one_line_and_a_rerun_recovers(tiny_pair, scored, tmp_path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip() or 'not permitted'})")
    try:
        result = tdsdist(*score_args(tiny_pair, mount / "s.zarr"))
        line = error_line(result)
        assert result.returncode == 2 and "no space left" in line
        # How much the rest needs (BYTES_PER_POSITION each) against what is free, in the line.
        found = re.search(r"the (\d+) positions still to score need about ([\d.]+) KB", line)
        assert found and 0 < int(found[1]) <= 96, line
        assert float(found[2]) == round(int(found[1]) * BYTES_PER_POSITION / 1000, 1)
        assert re.search(
            r"need about [\d.]+ KB and a new store 1.0 MB more, [\d.]+ (B|KB) free", line
        ), line
        assert not [p for p in mount.iterdir() if p.name != "s.zarr"]  # no staging folder left
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --- hostile text -------------------------------------------------------------------------------


def test_a_secret_file_as_data_echoes_nothing(tiny_pair, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    args = score_args(tiny_pair, tmp_path / "n.zarr")
    args[args.index("--data") + 1] = str(secret)
    result = tdsdist(*args)
    assert result.returncode == 2 and "hunter2" not in result.stderr + result.stdout
    assert not (tmp_path / "n.zarr").exists()


# --- several plain processes on one store -------------------------------------------------------


def test_two_processes_on_one_new_store_share_the_units(tiny_pair, scored, tmp_path) -> None:
    new = tmp_path / "n.zarr"
    runs = [
        subprocess.Popen(
            [*CLI, *score_args(tiny_pair, new)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    positions = [
        int(line.split()[2])
        for out, err in outputs
        for line in err.splitlines()
        if line.startswith("tdsdist: scored")
    ]
    assert sum(positions) == 96  # each unit scored once, whoever won it
    arrays = [k for k in digest(scored) if not k.endswith("zarr.json")]
    assert {k: digest(new)[k] for k in arrays} == {k: digest(scored)[k] for k in arrays}
    assert not list((new / ".claims").iterdir())  # every claim released
