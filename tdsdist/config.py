"""The jobs' configurations: option sections (one dataclass per concern), composed per job.

Each field maps one to one onto a CLI flag (`top_k` <-> `--top-k`) and a YAML key (`top_k` or
`top-k`); a flag given on the command line overrides the file. Everything else is derived from
the fields by `options.py`: the click options (type, `Literal` choices, the docstring under each
field as the help text), the type checks, `~` expansion, minimums, the required fields and the
fingerprint keys. A new option is one field in one section; a new job composes the sections it
needs (`ScoreConfig`, `GenerateConfig` here; `ServeConfig` in `serve/config.py`).

A composition inherits its sections, so its fields stay flat (`config.top_k`) and flags and YAML
keys are those of tdsdist 0.1.0. Where a job needs another default, choice or fingerprint rule for
a section's field, it redeclares the field (keeping its place); `field_help` overrides only help.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from tdsdist import options
from tdsdist.options import Section, field_docs, opt  # noqa: F401  (field_docs re-exported)

Dtype = Literal["float32", "bfloat16", "float16", "float64"]
AlignedTemplate = Literal["input", "chat", "input-verbatim"]
HeadDtype = Literal["float32", "model"]
DataFormat = Literal["auto", "json", "jsonl", "parquet", "datasets", "alpaca-eval", "chat"]
Turns = Literal["last", "all"]

DTYPES: tuple[str, ...] = get_args(Dtype)
ALIGNED_TEMPLATES: tuple[str, ...] = get_args(AlignedTemplate)
HEAD_DTYPES: tuple[str, ...] = get_args(HeadDtype)


@dataclass(kw_only=True)
class ModelPair(Section):
    """Which two models, and how their weights load."""

    aligned: str | None = field(
        default=None, metadata=opt(fingerprint="as-is", path=True, required=True)
    )
    """The aligned (chat) model: a hub id or a local folder. Its answers are being scored. With
    --aligned-adapter: optional, where the aligned tokenizer comes from (no weights load)."""
    base: str = field(metadata=opt(fingerprint="as-is", path=True))
    """The base model: a hub id or a local folder."""
    aligned_revision: str | None = field(default=None, metadata=opt(fingerprint="as-is"))
    """Hub revision (branch, tag or commit) of the aligned model."""
    base_revision: str | None = field(default=None, metadata=opt(fingerprint="as-is"))
    """Hub revision of the base model."""
    dtype: Dtype = field(default="float32", metadata=opt(fingerprint="as-is"))
    """Model weights' dtype; the normaliser and all statistics are float32 whatever this is."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available)."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model (off: never run remote code unless asked)."""

    def check(self) -> None:
        if self.aligned is None and getattr(self, "aligned_adapter", None) is None:
            raise ValueError("aligned is required (or aligned_adapter, with base)")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(kw_only=True)
class Adapter(Section):
    """The aligned model as the base model plus a LoRA adapter (with `ModelPair`)."""

    aligned_adapter: str | None = field(default=None, metadata=opt(path=True))
    """A local LoRA adapter folder (peft): the aligned model is --base plus it, one copy of the
    base weights; the aligned tokenizer is --aligned's, else the adapter folder's, else --base's."""

    def check(self) -> None:
        if self.aligned_adapter is None:
            return
        if getattr(self, "base", None) is None:
            raise ValueError("aligned_adapter needs base: the model the adapter is applied to")
        if getattr(self, "aligned", None) is None and getattr(self, "aligned_revision", None):
            raise ValueError(
                "aligned_revision needs aligned (with aligned_adapter, the tokenizer's)"
            )


@dataclass(kw_only=True)
class Templates(Section):
    """How each model's context is built from an example."""

    aligned_template: AlignedTemplate = field(default="input", metadata=opt(fingerprint="template"))
    """Aligned context: `input` (the data's prompt field verbatim, tokenized with the default
    special tokens, never a doubled BOS), `input-verbatim` (the same, keeping a doubled BOS as the
    original AlignTDS pipeline did: the one that reproduces the published numbers, see
    docs/reproducing.md) or `chat` (the tokenizer's chat template)."""
    base_template: str = field(default="plain", metadata=opt(fingerprint="template"))
    """Base context: `plain`, `urial:FILE`, `none`, or a Jinja template file (variable `query`)."""


@dataclass(kw_only=True)
class Contexts(Section):
    """How the scored contexts and answers are cut and tokenized."""

    max_output_tokens: int | None = field(
        default=None, metadata=opt(fingerprint="as-is", minimum=1)
    )
    """Cut answers to this many tokens (the cut is flagged per example)."""
    truncate_context: bool = field(default=False, metadata=opt(fingerprint="as-is"))
    """Cut contexts from the left when context + answer exceed the model's window (flagged)."""
    answer_eos_text: str | None = None
    """Literal EOS text that ends the answers in the data (e.g. `</s>`, Llama-2's, in the
    shipped just-eval file): the answer ends before it, as `generate` writes answers."""
    answer_eos: Literal["drop", "map"] = "drop"
    """With --answer-eos-text: `drop` it, or `map` it to the scoring tokenizer's EOS token (one
    token; the original scored the text as the tokenizer splits it: see docs/reproducing.md)."""
    no_prefix_cache: bool = False
    """Recompute the contexts' shared token prefix in every batch instead of caching it once."""
    special_tokens_in_text: Literal["split", "parse"] | None = None
    """A special-token string inside an answer, instruction or message (`<|im_end|>`): `split`
    tokenizes it as text (the default for a new store), `parse` as the control token (earlier
    releases; the default when resuming a store made so). Only the template's markers and
    --answer-eos map give special ids.
    (Recorded by `inputs/special_text.py`, not by the generic fingerprint.)"""


@dataclass(kw_only=True)
class Head(Section):
    """The scoring head: what is kept per position, and its precision and memory."""

    top_k: int = field(default=20, metadata=opt(fingerprint="as-is", minimum=1))
    """Candidates kept per position and model (the published pipeline kept 30)."""
    head_dtype: HeadDtype | None = None
    """Precision of the output projection of the answer rows: `float32` (from the model's hidden
    states; the default for a new store) or `model` (the weights' dtype, as tdsdist 0.1.0 did;
    the default when resuming a store made so). Matters only for bfloat16 / float16 weights."""
    logits_chunk_mib: int = field(default=64, metadata=opt(minimum=1))
    """Memory budget of one chunk of float32 logits in the scoring head."""


@dataclass(kw_only=True)
class Batching(Section):
    """How scoring forwards are batched."""

    max_tokens_per_batch: int = field(default=8192, metadata=opt(minimum=1))
    """Token budget of one forward batch (padded length times batch size)."""


@dataclass(kw_only=True)
class Parallel(Section):
    """Tensor parallelism and the collectives' patience."""

    tp: int = field(default=1, metadata=opt(minimum=1))
    """Tensor-parallel size: ranks that hold one model replica (divides the processes per node)."""
    dist_timeout: int = field(default=600, metadata=opt(minimum=1))
    """Seconds any collective may wait for a peer before the job fails (no hang on a dead rank)."""

    def check(self) -> None:
        if self.tp > 1 and getattr(self, "dtype", None) == "float64":  # DeepSpeed refuses it
            raise ValueError("dtype float64 does not work with tp > 1: use float32 or bfloat16")
        if self.tp > 1 and getattr(self, "aligned_adapter", None) is not None:
            raise ValueError(  # AutoTP would split the layers peft wrapped, not the adapters
                "aligned_adapter does not work with tp > 1 (tensor parallelism would split the"
                " base weights but not the adapter): merge the adapter and pass it as aligned"
            )


@dataclass(kw_only=True)
class ArrayTasks(Section):
    """Several jobs (a SLURM array) sharing one store."""

    task_index: int | None = field(default=None, metadata=opt(minimum=0))
    """This array task's index (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0)."""
    task_count: int | None = field(default=None, metadata=opt(minimum=1))
    """Number of array tasks sharing the store (default: SLURM_ARRAY_TASK_COUNT, else 1)."""


@dataclass(kw_only=True)
class Data(Section):
    """The input file and which of its examples are used."""

    data: str = field(metadata=opt(path=True))
    """The aligned model's answers: a just-eval JSON list or JSONL file, Parquet, a `datasets`
    save_to_disk folder, AlpacaEval model outputs or chat transcripts (see --format)."""
    format: DataFormat = "auto"
    """Data format: `auto` (detected from the file), a container (`json`, `jsonl`, `parquet`,
    `datasets`) or a record kind (`alpaca-eval`, `chat`); the other is then detected."""
    limit: int | None = field(default=None, metadata=opt(fingerprint="as-is", minimum=1))
    """Use only the first N examples of the data file."""
    keep_fields: str = "all"
    """The input's metadata fields kept per example in the store, for `--group-by`: `all` (every
    scalar field but the texts and the id; long strings left out), `none`, or `a,b`."""


@dataclass(kw_only=True)
class InputFields(Section):
    """Where the answers file keeps each part of an example."""

    id_field: str = "id"
    """Input field with the example id."""
    instruction_field: str = "pure_input"
    """Input field with the bare instruction (used by base templates and `chat`)."""
    input_field: str = "input"
    """Input field with the aligned model's full prompt (used by `--aligned-template input`)."""
    output_field: str = "output"
    """Input field with the answer (a string, or a list whose first element is the answer)."""
    turns: Turns = "last"
    """Chat transcripts: score the `last` assistant turn (id ID) or `all` (id ID/N, N the 1-based
    assistant turn number)."""
    skip_empty_answers: bool = False
    """Leave out examples whose answer is empty (listed in the store) instead of refusing the file."""


@dataclass(kw_only=True)
class StoreOptions(Section):
    """The Zarr store written, and its unit of work."""

    store: str = field(metadata=opt(path=True))
    """The output Zarr store (a folder)."""
    unit_size: int = field(default=32, metadata=opt(fingerprint="as-is", minimum=1))
    """Examples per work unit: the unit of resumption, of writing and (when distributed) of work."""
    overwrite: bool = False
    """Delete an existing store and start over instead of resuming it."""


@dataclass(kw_only=True)
class Decoding(Section):
    """How answers are decoded (`generate`, `nudge`)."""

    max_new_tokens: int = field(default=512, metadata=opt(fingerprint="as-is", minimum=1))
    """Longest answer, in tokens."""
    temperature: float = field(default=0.0, metadata=opt(fingerprint="as-is"))
    """0: greedy (lowest id among equal maxima); otherwise sample at this temperature."""
    top_p: float = field(default=1.0, metadata=opt(fingerprint="as-is"))
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int = field(default=0, metadata=opt(fingerprint="as-is"))
    """Sampling seed (per unit, so a resumed run samples what an uninterrupted one would)."""
    batch_size: int = field(default=16, metadata=opt(minimum=1))
    """Sequences decoded together."""

    def check(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass(kw_only=True)
class Stops(Section):
    """Where an answer ends besides its EOS."""

    stop: list[str] = field(default_factory=list, metadata=opt(fingerprint="as-is"))
    """Stop string (repeatable): the answer ends before the token that completes one."""


@dataclass(kw_only=True)
class Answers(Section):
    """The answers file a decoding job writes."""

    out: str = field(metadata=opt(path=True))
    """Answers file to write (a just-eval JSON list, which `score` reads)."""


@dataclass(kw_only=True)
class Nudging(Section):
    """Where the aligned model steps in while the base model writes (`nudge`)."""

    nudge_rule: Literal["threshold", "shifted"] = field(
        default="threshold", metadata=opt(fingerprint="as-is")
    )
    """`threshold`: the aligned model chooses where the base top-1 probability is below
    --nudge-threshold; `shifted`: where the aligned top-1 token is outside the base top 3."""
    nudge_threshold: float = field(default=0.4, metadata=opt(fingerprint="as-is"))
    """gamma of the `threshold` rule: 1 (or more) always nudges (the aligned model's answer), 0
    never (the base model's own answer)."""
    compare: bool = field(default=False, metadata=opt(fingerprint="as-is"))
    """Also decode the base-only answers (threshold 0) on the same prompts and record the
    aligned model's mean log-probability per token of both (a cheap likelihood comparison)."""

    def check(self) -> None:
        if not 0 <= self.nudge_threshold <= 1:
            raise ValueError(f"nudge_threshold must be in [0, 1], got {self.nudge_threshold!r}")


#: The sections `score` runs its pair with: what `generate --base` and `serve` share with it.
PAIR_SECTIONS = (ModelPair, Adapter, Templates, Head, Batching, Parallel)


@dataclass(kw_only=True)
class ScoreConfig(
    ModelPair,
    Adapter,
    Templates,
    Contexts,
    Head,
    Batching,
    Parallel,
    ArrayTasks,
    Data,
    InputFields,
    StoreOptions,
):
    """The options of `tdsdist score`."""


@dataclass(kw_only=True)
class GenerateConfig(
    ModelPair,
    Adapter,
    Templates,
    Head,
    Batching,
    Parallel,
    Data,
    StoreOptions,
    Answers,
    Decoding,
    Stops,
):
    """The options of `tdsdist generate`. Its fingerprint (what the answers depend on) takes the
    sections' fingerprinted fields but those of the base model, which only the scoring with
    --base uses; the base's own come into the store's scoring fingerprint."""

    # Optional here (a required field of ModelPair): the redeclared dataclass field narrows nothing.
    base: str | None = field(default=None, metadata=opt(path=True))  # type: ignore[assignment]
    """Then score both models into --store in the same job (each model loaded once)."""
    base_revision: str | None = None
    """Hub revision of the base model."""
    base_template: str = "plain"
    """Base context for the scoring with --base (as `score --base-template`)."""
    aligned_template: Literal["chat", "input"] = field(
        default="chat", metadata=opt(fingerprint="template")
    )
    """`chat` (the tokenizer's chat template on the instruction) or `input` (the prompt verbatim)."""
    format: DataFormat = field(default="auto", metadata=opt(fingerprint="unless-default"))
    """Prompts' format (as `score --format`)."""
    # Optional here (a required field of StoreOptions).
    store: str | None = field(default=None, metadata=opt(path=True))  # type: ignore[assignment]
    """Also record the answers into this store, ready for `score` (or scored here with --base)."""

    field_help: ClassVar[dict[str, str]] = {
        "aligned": "The aligned model: a hub id or a local folder (with --aligned-adapter:"
        " optional, the tokenizer's source, as in `score`).",
        "aligned_adapter": "A local LoRA adapter folder (peft): the aligned model is --base plus"
        " it (needs --base; without --store nothing is scored).",
        "data": "Prompts: a just-eval JSON/JSONL file, a JSON list of instruction strings, or any"
        " format `score` reads (chat transcripts: the conversation up to the last user turn).",
        "overwrite": "Generate again over an existing answers file (and an unfinished run's parts).",
        "head_dtype": "With --base: precision of the scoring head's projection (as `score"
        " --head-dtype`).",
    }

    def check(self) -> None:
        if self.base is not None and self.store is None and self.aligned_adapter is None:
            raise ValueError("base needs store: the scores of both models go into --store")


@dataclass(kw_only=True)
class NudgeConfig(
    ModelPair, Templates, Head, Parallel, Data, StoreOptions, Answers, Decoding, Nudging
):
    """The options of `tdsdist nudge`: the pair decodes together (one vocabulary, no adapter).
    Its fingerprint also takes the prompts' format and the head's precision as they are."""

    aligned_template: Literal["chat", "input"] = field(
        default="chat", metadata=opt(fingerprint="template")
    )
    """The aligned model's context: `chat` (its chat template) or `input` (the prompt verbatim)."""
    format: DataFormat = field(default="auto", metadata=opt(fingerprint="as-is"))
    """Prompts' format (as `score --format`)."""
    head_dtype: HeadDtype | None = field(default=None, metadata=opt(fingerprint="as-is"))
    """Precision of the head's projection (as `score --head-dtype`; default float32)."""

    field_help: ClassVar[dict[str, str]] = {
        "aligned": "The aligned model (hub id or local folder): it steps in where the rule fires.",
        "base": "The base model: it writes the answers (one vocabulary with the aligned model).",
        "data": "Prompts: any format `generate` reads.",
        "out": "Answers file to write (a just-eval JSON list, which `score` reads), with each"
        " answer's nudged fraction.",
        "store": "The pair head's store of the answers (complete), with which model chose each"
        " token.",
        "seed": "Sampling seed (per prompt, so a resumed run samples what an uninterrupted one"
        " would).",
        "batch_size": "Answers decoded together (continuous batching).",
        "top_k": "Candidates recorded per position and model.",
        "overwrite": "Decode again over an existing answers file and store (and an unfinished"
        " run's parts).",
    }


def field_names(cls: type = ScoreConfig) -> list[str]:
    return options.field_names(cls)


def load_yaml(path: Path | str, cls: type = ScoreConfig) -> dict[str, Any]:
    """`options.load_yaml`, for `score` by default."""
    return options.load_yaml(path, cls)


def build_config(
    file_values: dict[str, Any], flag_values: dict[str, Any], cls: type = ScoreConfig
) -> Any:
    """`options.build_config`, for `score` by default."""
    return options.build_config(file_values, flag_values, cls)
