"""The jobs' configurations: typed dataclasses, filled from a YAML file and CLI flags.

Each field maps one to one onto a CLI flag (`top_k` <-> `--top-k`); the CLI derives its options
from the fields here (type, choices, and the docstring under each field as the help text), so a
new field is a new flag. A YAML file under `configs/` uses the field names; a flag given on the
command line overrides the file. Validation is in `__post_init__` and names the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tdsdist.errors import TdsError
from tdsdist.inputs.data import FORMATS
from tdsdist.inputs.transcripts import TURNS

DTYPES = ("float32", "bfloat16", "float16", "float64")
ALIGNED_TEMPLATES = ("input", "chat", "input-verbatim")
HEAD_DTYPES = ("float32", "model")


def _check_types(config: Any) -> None:
    """Each value has its field's type: a YAML `revision: 1234567` is an int, not the string it
    names, and a quoted `overwrite: "no"` is a true string that would delete the store."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), f.type
        if value is None and kind.endswith("| None"):
            continue
        kind = kind.removesuffix(" | None")
        if kind == "str" and not isinstance(value, str):
            raise ValueError(f"{f.name} must be a string, got {value!r} (quote it in YAML)")
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{f.name} must be true or false, got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{f.name} must be an integer, got {value!r}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        if kind == "list[str]" and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{f.name} must be a list of strings, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")


def _check_positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_common(config: Any) -> None:
    """What every job checks: types, `~` in paths, the device, tp with float64."""
    for name in ("aligned", "aligned_adapter", "base", "data", "store", "out"):
        value = getattr(config, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(config, name, os.path.expanduser(value))
    _check_types(config)
    if not (config.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", config.device)):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    if config.tp > 1 and config.dtype == "float64":  # DeepSpeed's inference engine refuses it
        raise ValueError("dtype float64 does not work with tp > 1: use float32 or bfloat16")
    if config.aligned_adapter is not None:
        _check_adapter_options(config)


def _check_adapter_options(config: Any) -> None:
    """`aligned_adapter`: the aligned model is `base` plus the adapter (one copy of the weights)."""
    if config.tp > 1:  # AutoTP would split the layers peft wrapped, not the adapters
        raise ValueError(
            "aligned_adapter does not work with tp > 1 (tensor parallelism would split the base"
            " weights but not the adapter): merge the adapter and pass it as aligned"
        )
    if config.base is None:
        raise ValueError("aligned_adapter needs base: the model the adapter is applied to")
    if config.aligned is None and config.aligned_revision is not None:
        raise ValueError("aligned_revision needs aligned (with aligned_adapter, the tokenizer's)")


@dataclass(kw_only=True)
class ScoreConfig:
    aligned: str | None = None
    """The aligned (chat) model: a hub id or a local folder. Its answers are being scored. With
    --aligned-adapter: optional, where the aligned tokenizer comes from (no weights load)."""
    base: str
    """The base model: a hub id or a local folder."""
    aligned_adapter: str | None = None
    """A local LoRA adapter folder (peft): the aligned model is --base plus it, one copy of the
    base weights; the aligned tokenizer is --aligned's, else the adapter folder's, else --base's."""
    data: str
    """The aligned model's answers: a just-eval JSON list or JSONL file, Parquet, a `datasets`
    save_to_disk folder, AlpacaEval model outputs or chat transcripts (see --format)."""
    store: str
    """The output Zarr store (a folder)."""
    top_k: int = 20
    """Candidates kept per position and model (the published pipeline kept 30)."""
    base_template: str = "plain"
    """Base context: `plain`, `urial:FILE`, `none`, or a Jinja template file (variable `query`)."""
    aligned_template: str = field(default="input", metadata={"choices": ALIGNED_TEMPLATES})
    """Aligned context: `input` (the data's prompt field verbatim, tokenized with the default
    special tokens, never a doubled BOS), `input-verbatim` (the same, keeping a doubled BOS as the
    original AlignTDS pipeline did) or `chat` (the tokenizer's chat template)."""
    max_output_tokens: int | None = None
    """Cut answers to this many tokens (the cut is flagged per example)."""
    limit: int | None = None
    """Score only the first N examples of the data file."""
    answer_eos_text: str | None = None
    """Literal EOS text that ends the answers in the data (e.g. `</s>`, Llama-2's, in the
    shipped just-eval file): the answer ends before it, as `generate` writes answers."""
    answer_eos: str = field(default="drop", metadata={"choices": ("drop", "map")})
    """With --answer-eos-text: `drop` it, or `map` it to the scoring tokenizer's EOS token."""
    unit_size: int = 32
    """Examples per work unit: the unit of resumption, of writing and (when distributed) of work."""
    dtype: str = field(default="float32", metadata={"choices": DTYPES})
    """Model weights' dtype; the normaliser and all statistics are float32 whatever this is."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    head_dtype: str | None = field(default=None, metadata={"choices": HEAD_DTYPES})
    """Precision of the output projection of the answer rows: `float32` (from the model's hidden
    states; the default for a new store) or `model` (the weights' dtype, as tdsdist 0.1.0 did;
    the default when resuming a store made so). Matters only for bfloat16 / float16 weights."""
    special_tokens_in_text: str | None = field(
        default=None, metadata={"choices": ("split", "parse")}
    )
    """A special-token string inside an answer, instruction or message (`<|im_end|>`): `split`
    tokenizes it as text (the default for a new store), `parse` as the control token (earlier
    releases; the default when resuming a store made so). Only the template's markers and
    --answer-eos map give special ids."""
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
    format: str = field(default="auto", metadata={"choices": FORMATS})
    """Data format: `auto` (detected from the file), a container (`json`, `jsonl`, `parquet`,
    `datasets`) or a record kind (`alpaca-eval`, `chat`); the other is then detected."""
    turns: str = field(default="last", metadata={"choices": TURNS})
    """Chat transcripts: score the `last` assistant turn (id ID) or `all` (id ID/N, N the 1-based
    assistant turn number)."""
    keep_fields: str = "all"
    """The input's metadata fields kept per example in the store, for `--group-by`: `all` (every
    scalar field but the texts and the id; long strings left out), `none`, or `a,b`."""

    def __post_init__(self) -> None:
        if self.aligned is None and self.aligned_adapter is None:
            raise ValueError("aligned is required (or aligned_adapter, with base)")
        _check_common(self)
        _check_positive(self, "top_k", "unit_size", "max_tokens_per_batch", "logits_chunk_mib", "tp", "dist_timeout", "max_output_tokens", "limit", "task_count")  # fmt: skip
        if self.task_index is not None and self.task_index < 0:
            raise ValueError(f"task_index must be a non-negative integer, got {self.task_index!r}")


@dataclass(kw_only=True)
class GenerateConfig:
    aligned: str | None = None
    """The aligned model: a hub id or a local folder (with --aligned-adapter: optional, the
    tokenizer's source, as in `score`)."""
    aligned_adapter: str | None = None
    """A local LoRA adapter folder (peft): the aligned model is --base plus it (needs --base;
    without --store nothing is scored)."""
    data: str
    """Prompts: a just-eval JSON/JSONL file, a JSON list of instruction strings, or any format
    `score` reads (chat transcripts: the conversation up to the last user turn)."""
    out: str
    """Answers file to write (a just-eval JSON list, which `score` reads)."""
    store: str | None = None
    """Also record the answers into this store, ready for `score` (or scored here with --base)."""
    base: str | None = None
    """Then score both models into --store in the same job (each model loaded once)."""
    base_template: str = "plain"
    """Base context for the scoring with --base (as `score --base-template`)."""
    base_revision: str | None = None
    """Hub revision of the base model."""
    aligned_template: str = field(default="chat", metadata={"choices": ("chat", "input")})
    """`chat` (the tokenizer's chat template on the instruction) or `input` (the prompt verbatim)."""
    max_new_tokens: int = 512
    """Longest answer, in tokens."""
    temperature: float = 0.0
    """0: greedy (lowest id among equal maxima); otherwise sample at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Sampling seed (per unit, so a resumed run samples what an uninterrupted one would)."""
    stop: list[str] = field(default_factory=list)
    """Stop string (repeatable): the answer ends before the token that completes one."""
    batch_size: int = 16
    """Sequences decoded together."""
    top_k: int = 20
    """Candidates recorded per position (with --store)."""
    limit: int | None = None
    """Generate for the first N prompts only."""
    unit_size: int = 32
    """Prompts per work unit: the unit of resumption and (when distributed) of work."""
    dtype: str = field(default="float32", metadata={"choices": DTYPES})
    """Model weights' dtype; the recorded statistics are float32 whatever this is."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    overwrite: bool = False
    """Generate again over an existing answers file (and an unfinished run's parts)."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model (off: never run remote code unless asked)."""
    aligned_revision: str | None = None
    """Hub revision (branch, tag or commit) of the aligned model."""
    tp: int = 1
    """Tensor-parallel size: ranks that hold one model replica (divides the processes per node)."""
    dist_timeout: int = 600
    """Seconds any collective may wait for a peer before the job fails (no hang on a dead rank)."""
    head_dtype: str | None = field(default=None, metadata={"choices": HEAD_DTYPES})
    """With --base: precision of the scoring head's projection (as `score --head-dtype`)."""
    max_tokens_per_batch: int = 8192
    """With --base: token budget of one scoring forward (as `score`)."""
    logits_chunk_mib: int = 64
    """With --base: memory budget of one chunk of float32 logits in the scoring head."""
    format: str = field(default="auto", metadata={"choices": FORMATS})
    """Prompts' format (as `score --format`)."""
    keep_fields: str = "all"
    """The prompts' metadata fields kept in the answers file and the store, for `--group-by`:
    `all` (every scalar field but the texts and the id; long strings left out), `none`, `a,b`."""

    def __post_init__(self) -> None:
        if self.aligned is None and self.aligned_adapter is None:
            raise ValueError("aligned is required (or aligned_adapter, with base)")
        _check_common(self)
        if self.base is not None and self.store is None and self.aligned_adapter is None:
            raise ValueError("base needs store: the scores of both models go into --store")
        _check_positive(self, "max_tokens_per_batch", "logits_chunk_mib", "max_new_tokens", "batch_size", "top_k", "unit_size", "limit", "tp", "dist_timeout")  # fmt: skip
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass(kw_only=True)
class NudgeConfig:
    aligned: str
    """The aligned model (hub id or local folder): it steps in where the rule fires."""
    base: str
    """The base model: it writes the answers (one vocabulary with the aligned model)."""
    data: str
    """Prompts: any format `generate` reads."""
    out: str
    """Answers file to write (a just-eval JSON list, which `score` reads), with each answer's
    nudged fraction."""
    store: str
    """The pair head's store of the answers (complete), with which model chose each token."""
    base_template: str = "plain"
    """The base model's context: `plain`, `urial:FILE`, `none`, or a Jinja template file."""
    aligned_template: str = field(default="chat", metadata={"choices": ("chat", "input")})
    """The aligned model's context: `chat` (its chat template) or `input` (the prompt verbatim)."""
    nudge_rule: str = field(default="threshold", metadata={"choices": ("threshold", "shifted")})
    """`threshold`: the aligned model chooses where the base top-1 probability is below
    --nudge-threshold; `shifted`: where the aligned top-1 token is outside the base top 3."""
    nudge_threshold: float = 0.4
    """gamma of the `threshold` rule: 1 (or more) always nudges (the aligned model's answer), 0
    never (the base model's own answer)."""
    compare: bool = False
    """Also decode the base-only answers (threshold 0) on the same prompts and record the
    aligned model's mean log-probability per token of both (a cheap likelihood comparison)."""
    max_new_tokens: int = 512
    """Longest answer, in tokens."""
    temperature: float = 0.0
    """0: greedy (lowest id among equal maxima); otherwise sample at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = 0
    """Sampling seed (per prompt, so a resumed run samples what an uninterrupted one would)."""
    batch_size: int = 16
    """Answers decoded together (continuous batching)."""
    top_k: int = 20
    """Candidates recorded per position and model."""
    limit: int | None = None
    """Decode for the first N prompts only."""
    unit_size: int = 32
    """Prompts per work unit: the unit of resumption and (when distributed) of work."""
    dtype: str = field(default="float32", metadata={"choices": DTYPES})
    """Model weights' dtype; the recorded statistics are float32 whatever this is."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    head_dtype: str | None = field(default=None, metadata={"choices": HEAD_DTYPES})
    """Precision of the head's projection (as `score --head-dtype`; default float32)."""
    logits_chunk_mib: int = 64
    """Memory budget of one chunk of float32 logits in the pair head."""
    overwrite: bool = False
    """Decode again over an existing answers file and store (and an unfinished run's parts)."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model (off: never run remote code unless asked)."""
    aligned_revision: str | None = None
    """Hub revision of the aligned model."""
    base_revision: str | None = None
    """Hub revision of the base model."""
    tp: int = 1
    """Tensor-parallel size: ranks that hold one replica of the pair."""
    dist_timeout: int = 600
    """Seconds any collective may wait for a peer before the job fails (no hang on a dead rank)."""
    format: str = field(default="auto", metadata={"choices": FORMATS})
    """Prompts' format (as `score --format`)."""
    keep_fields: str = "all"
    """The prompts' metadata fields kept in the answers file and the store, for `--group-by`:
    `all` (every scalar field but the texts and the id; long strings left out), `none`, `a,b`."""

    def __post_init__(self) -> None:
        _check_common(self)
        _check_positive(self, "logits_chunk_mib", "max_new_tokens", "batch_size", "top_k", "unit_size", "limit", "tp", "dist_timeout")  # fmt: skip
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if not 0 <= self.nudge_threshold <= 1:
            raise ValueError(f"nudge_threshold must be in [0, 1], got {self.nudge_threshold!r}")

    @property
    def aligned_adapter(self) -> None:
        """No adapters here (`_check_common` asks every job)."""
        return None


#: The fields each job cannot run without (on the command line or in --config).
REQUIRED = {
    ScoreConfig: ("aligned", "base", "data", "store"),
    GenerateConfig: ("aligned", "data", "out"),
    NudgeConfig: ("aligned", "base", "data", "out", "store"),
}


def required_fields(cls: type) -> tuple[str, ...]:
    """`REQUIRED[cls]`, or the class's own `required_` (a configuration defined elsewhere)."""
    return REQUIRED.get(cls) or getattr(cls, "required_", ())


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field (Python keeps none at run time: read from the source).
    A class built from other classes' fields carries its docs as `field_docs_` instead."""
    if hasattr(cls, "field_docs_"):
        return dict(cls.field_docs_)
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def field_names(cls: type = ScoreConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def load_yaml(path: Path | str, cls: type = ScoreConfig) -> dict[str, Any]:
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
    unknown = sorted(set(values) - set(field_names(cls)))
    if unknown:
        raise TdsError(f"{path}: unknown option(s): {', '.join(unknown)}")
    # Check the file's values on their own, so that a bad one is reported with the file's name.
    required = {name: "-" for name in required_fields(cls)}
    given = {k: v for k, v in values.items() if not (k in required and v in (None, ""))}
    try:
        cls(**{**required, **given})
    except (TypeError, ValueError) as e:
        raise TdsError(f"{path}: invalid configuration: {e}") from None
    return values


def build_config(
    file_values: dict[str, Any], flag_values: dict[str, Any], cls: type = ScoreConfig
) -> Any:
    """Merge file and flags (flags win) and validate; a bad value is one `TdsError` line."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    missing = [n for n in required_fields(cls) if merged.get(n) in (None, "")]
    if merged.get("aligned_adapter") and "aligned" in missing:  # the adapter is the aligned model
        missing.remove("aligned")
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise TdsError(f"missing required option(s): {flags} (on the command line or in --config)")
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:
        raise TdsError(f"invalid configuration: {e}") from None
