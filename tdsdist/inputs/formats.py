"""Read a data file's records, whatever holds them: a JSON list, JSONL, Parquet or a `datasets`
folder.

A container only yields records (dicts, or strings for a list of prompts); what the records mean
(just-eval, AlpacaEval, chat transcripts) is `data.py`'s business. Detection looks at the file,
not only its name: a folder with `state.json` is a `datasets` folder (`Dataset.save_to_disk`), a
file that starts with Parquet's magic bytes `PAR1` is Parquet, anything else is JSON or JSONL. A
`datasets` folder is read with pyarrow from its own arrow files: never a hub download, and no
code of the folder runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from tdsdist.errors import TdsError, first_line

#: Containers of records; `--format` also takes a record kind (`data.SCHEMAS`).
CONTAINERS = ("json", "jsonl", "parquet", "datasets")
PARQUET_MAGIC = b"PAR1"


def detect_container(path: Path) -> str:
    """`datasets` for a save_to_disk folder, `parquet` by magic bytes, else `json` (list or JSONL,
    told apart while parsing)."""
    if path.is_dir():
        return "datasets"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise TdsError(f"{path}: cannot read the data file ({e.__class__.__name__}: {e})") from None
    return "parquet" if head == PARQUET_MAGIC else "json"


def read_records(path: Path, container: str = "auto") -> tuple[list[object], str]:
    """The records of `path` read as `container` (`auto`: detected, a JSON list or JSONL told
    apart while parsing), and the container they came from."""
    if not path.exists():
        raise TdsError(f"{path}: data file not found")
    forced = container != "auto"
    if not forced:
        container = detect_container(path)
    if container == "datasets":
        return read_datasets_folder(path), "datasets"
    if path.is_dir():
        raise TdsError(
            f"{path}: cannot read the data file: it is a folder, and --format {container} reads a"
            " file (a `datasets` folder is read with --format auto or datasets)"
        )
    if container == "parquet":
        return read_parquet(path), "parquet"
    try:
        # utf-8-sig: a byte order mark (as some Windows tools write) is dropped, not parsed.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        if forced and detect_container(path) == "parquet":
            raise TdsError(
                f"{path}: is a Parquet file, not {container} (use --format parquet or auto)"
            ) from None
        raise TdsError(f"{path}: cannot read the data file ({e.__class__.__name__}: {e})") from None
    records, found = parse_json(path, text)
    if forced and found != container:
        kinds = {"json": "a JSON list", "jsonl": "JSONL (one object per line)"}
        raise TdsError(
            f"{path}: --format {container} expects {kinds[container]}, but the file is"
            f" {kinds[found]} (use --format {found} or auto)"
        )
    return records, found


def parse_json(path: Path, text: str) -> tuple[list[object], str]:
    """JSON list, or JSONL objects (one per non-empty line); and which of the two it was."""
    stripped = text.lstrip()
    if not stripped:
        raise TdsError(f"{path}: the file is empty: no examples")
    if stripped[0] == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise TdsError(
                f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting too deep
            raise TdsError(f"{path}: invalid JSON ({first_line(e)})") from None
        return records, "json"
    if stripped[0] != "{":
        raise TdsError(
            f"{path}: the top level must be a JSON list of objects or JSONL (one object per line)"
        )
    records = []
    # Lines end at "\n" only: JSON strings may hold U+2028, U+0085 and the like unescaped, at
    # which str.splitlines() would cut a valid line in two (a trailing "\r" is JSON whitespace).
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if _is_one_object(text):
                raise TdsError(
                    f"{path}: the top level is one JSON object spread over several lines; expected"
                    " a JSON list of objects or JSONL (one object per line)"
                ) from None
            raise TdsError(
                f"{path}: JSONL line {lineno} does not parse (column {e.colno}: {e.msg})"
            ) from None
        except (ValueError, RecursionError) as e:
            raise TdsError(
                f"{path}: JSONL line {lineno} does not parse ({first_line(e)})"
            ) from None
    return records, "jsonl"


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def read_parquet(path: Path) -> list[object]:
    """Rows of a Parquet file as dicts (nested lists and structs become lists and dicts)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file it cannot take
        raise TdsError(f"{path}: is not a readable Parquet file ({first_line(e)})") from None
    records: list[object] = table.to_pylist()
    return records


def read_datasets_folder(path: Path) -> list[object]:
    """Rows of a folder written by `datasets.Dataset.save_to_disk`: `state.json` lists its arrow
    files (Arrow IPC streams), read in order with pyarrow."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    if not path.is_dir():
        raise TdsError(
            f"{path}: is not a `datasets` folder (--format datasets reads a folder written by"
            " Dataset.save_to_disk)"
        )
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").exists())
        raise TdsError(
            f"{path}: is a DatasetDict folder: pass one split's folder"
            f" ({', '.join(str(path / s) for s in splits) or 'none found'})"
        )
    state_file = path / "state.json"
    if not state_file.exists():
        raise TdsError(
            f"{path}: cannot read the data file: it is a folder but not a `datasets` folder"
            " (no state.json, as Dataset.save_to_disk writes)"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TdsError(
            f"{state_file}: is not a `datasets` state file ({type(e).__name__}: {first_line(e)})"
        ) from None
    if not names:
        raise TdsError(f"{state_file}: lists no data files: no examples")
    tables = []
    for name in names:
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
            raise TdsError(f"{state_file}: data file {name!r} is not in the folder")
        try:
            with pa.memory_map(str(file)) as source:
                tables.append(ipc.open_stream(source).read_all())
        except Exception as e:  # ArrowInvalid and the like: a damaged or foreign file
            raise TdsError(f"{file}: is not a readable arrow file ({first_line(e)})") from None
    try:
        table = pa.concat_tables(tables)
    except Exception as e:
        raise TdsError(f"{path}: its arrow files disagree on columns ({first_line(e)})") from None
    records: list[object] = table.to_pylist()
    return records
