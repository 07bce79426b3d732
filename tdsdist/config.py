"""The scoring job's configuration: one typed dataclass, filled from a YAML file and CLI flags.

Each field maps one to one onto a CLI flag (`top_k` <-> `--top-k`); a YAML file under `configs/`
uses the field names. A flag given on the command line overrides the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tdsdist.errors import TdsError

DTYPES = ("float32", "bfloat16", "float16", "float64")
# Fields whose YAML value must be a string (an unquoted `revision: 1234567` is an int) or a bool
# (a quoted `overwrite: "no"` is a true string, which would delete the store).
STRINGS = (
    "aligned",
    "base",
    "data",
    "store",
    "base_template",
    "aligned_template",
    "device",
    "id_field",
    "instruction_field",
    "input_field",
    "output_field",
)
OPTIONAL_STRINGS = ("aligned_revision", "base_revision")
BOOLS = ("truncate_context", "overwrite", "trust_remote_code", "skip_empty_answers")


@dataclass
class ScoreConfig:
    aligned: str
    """The aligned (chat) model: a hub id or a local folder. Its answers are being scored."""
    base: str
    """The base model: a hub id or a local folder."""
    data: str
    """The aligned model's answers: a just-eval JSON list or JSONL file."""
    store: str
    """The output Zarr store (a folder)."""
    top_k: int = 20
    """Candidates kept per position and model (the published pipeline kept 30)."""
    base_template: str = "plain"
    """Base context: `plain`, `urial:FILE`, `none`, or a Jinja template file (variable `query`)."""
    aligned_template: str = "input"
    """Aligned context: `input` (the data's prompt field verbatim) or `chat` (tokenizer template)."""
    max_output_tokens: int | None = None
    """Cut answers to this many tokens (the cut is flagged per example)."""
    limit: int | None = None
    """Score only the first N examples of the data file."""
    unit_size: int = 32
    """Examples per work unit: the unit of resumption, of writing and (when distributed) of work."""
    dtype: str = "float32"
    """Model weights' dtype; the normaliser and all statistics are float32 whatever this is."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    max_tokens_per_batch: int = 8192
    """Token budget of one forward batch (padded length times batch size)."""
    logits_chunk_mib: int = 64
    """Memory budget of one chunk of float32 logits in the scoring head."""
    truncate_context: bool = False
    """Cut contexts from the left when context + answer exceed the model's window (flagged)."""
    skip_empty_answers: bool = False
    """Leave out examples whose answer is empty (listed in the store) instead of refusing the file."""
    no_prefix_cache: bool = False
    """Recompute the contexts' shared token prefix in every batch instead of caching it once."""
    overwrite: bool = False
    """Delete an existing store and start over instead of resuming it."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model (off: never run remote code unless asked)."""
    aligned_revision: str | None = None
    """Hub revision (branch, tag or commit) of the aligned model."""
    base_revision: str | None = None
    """Hub revision of the base model."""
    tp: int = 1
    """Tensor-parallel size: ranks that hold one model replica (divides the processes per node)."""
    task_index: int | None = None
    """This array task's index (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0)."""
    task_count: int | None = None
    """Number of array tasks sharing the store (default: SLURM_ARRAY_TASK_COUNT, else 1)."""
    dist_timeout: int = 600
    """Seconds any collective may wait for a peer before the job fails (no hang on a dead rank)."""
    id_field: str = "id"
    """Input field with the example id."""
    instruction_field: str = "pure_input"
    """Input field with the bare instruction (used by base templates and `chat`)."""
    input_field: str = "input"
    """Input field with the aligned model's full prompt (used by `--aligned-template input`)."""
    output_field: str = "output"
    """Input field with the answer (a string, or a list whose first element is the answer)."""

    def __post_init__(self) -> None:
        for name in ("aligned", "base", "data", "store"):
            if isinstance(getattr(self, name), str) and getattr(self, name).startswith("~"):
                setattr(self, name, os.path.expanduser(getattr(self, name)))
        for name in STRINGS + OPTIONAL_STRINGS:
            value = getattr(self, name)
            if not isinstance(value, str) and not (name in OPTIONAL_STRINGS and value is None):
                raise ValueError(f"{name} must be a string, got {value!r} (quote it in YAML)")
        for name in BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

        def positive(name: str, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in (
            "top_k",
            "unit_size",
            "max_tokens_per_batch",
            "logits_chunk_mib",
            "tp",
            "dist_timeout",
        ):
            positive(name)
        for name in ("max_output_tokens", "limit", "task_count"):
            positive(name, optional=True)
        if self.task_index is not None and (
            isinstance(self.task_index, bool)
            or not isinstance(self.task_index, int)
            or self.task_index < 0
        ):
            raise ValueError(f"task_index must be a non-negative integer, got {self.task_index!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.tp > 1 and self.dtype == "float64":  # DeepSpeed's inference engine refuses it
            raise ValueError("dtype float64 does not work with tp > 1: use float32 or bfloat16")
        if self.aligned_template not in ("input", "chat"):
            raise ValueError(
                f"aligned_template must be 'input' or 'chat', got {self.aligned_template!r}"
            )
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ScoreConfig)]


def load_yaml(path: Path | str) -> dict[str, Any]:
    """A config file's keys, checked against the dataclass (a typo must not be silently ignored)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise TdsError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TdsError(
            f"{path}: cannot read the config file ({e.__class__.__name__}: {e})"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise TdsError(f"{path}: invalid YAML{at}: {problem}") from None
    if not isinstance(values, dict):
        raise TdsError(f"{path}: a config file must be a mapping of option names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise TdsError(f"{path}: unknown option(s): {', '.join(unknown)}")
    # Check the file's values on their own, so that a bad one is reported with the file's name.
    required = {name: "-" for name in ("aligned", "base", "data", "store")}
    given = {k: v for k, v in values.items() if not (k in required and v in (None, ""))}
    try:
        ScoreConfig(**{**required, **given})
    except (TypeError, ValueError) as e:
        raise TdsError(f"{path}: invalid configuration: {e}") from None
    return values


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> ScoreConfig:
    """Merge file and flags (flags win) and validate; a bad value is one `TdsError` line."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    missing = [n for n in ("aligned", "base", "data", "store") if merged.get(n) in (None, "")]
    if missing:
        flags = ", ".join("--" + n for n in missing)
        raise TdsError(f"missing required option(s): {flags} (on the command line or in --config)")
    try:
        return ScoreConfig(**merged)
    except (TypeError, ValueError) as e:
        raise TdsError(f"invalid configuration: {e}") from None
