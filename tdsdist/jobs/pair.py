"""The model pair of a job, resolved once before any model loads, then loaded by the one loader.

Every job that runs the pair (`score`'s `prepare`, `generate`, `nudge`, `serve`) asks the same
questions in the same order: where the aligned tokenizer comes from (with `--aligned-adapter`:
`--aligned`, the adapter folder or `--base`), whether the adapter fits the base, whether the two
vocabularies are one (or the aligned one appends to the base one), how each model's context is
built and how long a sequence each model takes. `ResolvedPair.resolve` answers them once, as one
line per bad input; `ResolvedPair.load` loads the runners through `parallel.loading`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tdsdist.engine.adapters import (
    Adapter,
    adapter_fingerprint,
    check_fits_base,
    read_adapter,
    tokenizer_source,
)
from tdsdist.engine.models import load_model_config, model_window
from tdsdist.engine.runner import ModelRunner
from tdsdist.errors import TdsError
from tdsdist.inputs.templates import ContextFn, aligned_context_fn, base_context_fn
from tdsdist.inputs.tokenizer import (
    VocabularyUnion,
    compare_vocabularies,
    load_tokenizer,
    tokenizer_hash,
)
from tdsdist.parallel.dist import Dist
from tdsdist.parallel.loading import load_adapter_runners, load_runner


@dataclass
class ResolvedPair:
    """Both models' sources, tokenizers, vocabularies and context functions (module docstring).

    `base_tokenizer` is None for a job that runs the aligned model alone (`generate` decoding);
    the base model's weights then still serve an adapter."""

    options: Any
    """The job's configuration: its `config.ModelPair`, `Adapter` (optional), `Templates`,
    `Head` and `Parallel` fields (`generate`'s base is optional)."""
    aligned_source: tuple[str, str | None]
    """Where the aligned tokenizer (and, without an adapter, the model) comes from, and revision."""
    tokenizer: Any
    """The aligned tokenizer: the one answers are written and stored with."""
    base_tokenizer: Any | None
    union: VocabularyUnion | None
    """Set when the aligned vocabulary appends tokens to the base one: scored over the union."""
    adapter: Adapter | None
    aligned_context: ContextFn
    base_context: ContextFn | None
    notes: list[str] = field(default_factory=list)
    """What the log says about the pair (an adapter made for another base name)."""
    _model_configs: dict[str, Any] = field(default_factory=dict, repr=False)
    _windows: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(
        cls, options: Any, *, with_base: bool = True, input_field: str = "input"
    ) -> ResolvedPair:
        """Resolve and check the pair of `options`; `with_base=False`: the aligned side only (its
        adapter still checked against the base). `input_field`: the data field `--aligned-template
        input` reads."""
        adapter = read_adapter(options.aligned_adapter) if _adapter(options) else None
        source = (options.aligned, options.aligned_revision)
        if adapter is not None:  # the aligned tokenizer: --aligned, the adapter's, or the base's
            name = tokenizer_source(options.aligned, options.aligned_adapter, options.base)
            source = (name, options.base_revision if name == options.base else source[1])
        assert source[0] is not None  # the configuration requires --aligned or an adapter
        tok = load_tokenizer(*source, options.trust_remote_code)
        base_tok = union = None
        if with_base:
            base_tok = load_tokenizer(
                options.base, options.base_revision, options.trust_remote_code
            )
            union = compare_vocabularies(tok, base_tok, source[0], options.base)
            check_union_layout(union, options)
            if options.top_k > min(len(tok), len(base_tok)):
                size = min(len(tok), len(base_tok))
                raise TdsError(f"--top-k {options.top_k} exceeds the vocabulary size {size}")
        pair = cls(
            options,
            source,
            tok,
            base_tok,
            union,
            adapter,
            aligned_context_fn(options.aligned_template, tok, input_field),
            base_context_fn(options.base_template) if with_base else None,
        )
        if adapter is not None:  # one body: the base's, with the adapter on
            base_config = pair.model_config("base")
            pair.notes = check_fits_base(
                adapter, options.base, base_config, options.trust_remote_code
            )
        return pair

    def model_config(self, model: str) -> Any:
        """`model`'s transformers configuration (read once; an adapter runs the base's body)."""
        if self.adapter is not None and model == "aligned":
            model = "base"
        if model not in self._model_configs:
            o = self.options
            name, revision = (o.base, o.base_revision) if model == "base" else self.aligned_source
            self._model_configs[model] = load_model_config(name, revision, o.trust_remote_code)
        return self._model_configs[model]

    def window(self, model: str) -> int:
        """The longest sequence `model` takes (its position limit, or its tokenizer's)."""
        if model not in self._windows:  # asked per request by `serve`
            tok = self.tokenizer if model == "aligned" else self.base_tokenizer
            self._windows[model] = model_window(self.model_config(model), tok)
        return self._windows[model]

    def vocab_size(self, model: str) -> int:
        """The rows of `model`'s output projection that are tokens (its tokenizer's size)."""
        return len(self.tokenizer) if self.union is None else int(getattr(self.union, model))

    def fingerprint_keys(self) -> dict[str, Any]:
        """The keys a store or a run records about the pair beyond the options: the adapter's
        hash, and the base tokenizer's with a vocabulary union (absent otherwise, as before)."""
        keys: dict[str, Any] = {}
        if self.adapter is not None:
            keys["aligned_adapter"] = adapter_fingerprint(self.adapter)
        if self.union is not None:
            keys["base_tokenizer_sha256"] = tokenizer_hash(self.base_tokenizer)
        return keys

    def load(
        self,
        device: torch.device,
        d: Dist,
        head_dtype: str = "float32",
        models: tuple[str, ...] = ("aligned", "base"),
    ) -> dict[str, ModelRunner]:
        """The runners of `models` as this rank runs them (`parallel.loading`): with an adapter,
        both sides over one copy of the base weights (`aligned` and `base`, whatever `models`)."""
        o = self.options
        kwargs: dict[str, Any] = {
            "dtype": o.dtype,
            "device": device,
            "d": d,
            "trust_remote_code": o.trust_remote_code,
            "head_dtype": head_dtype,
        }
        if self.adapter is not None:
            return load_adapter_runners(
                o.base,
                o.base_revision,
                o.aligned_adapter,
                vocab_size=self.vocab_size("base"),
                **kwargs,
            )
        sources = {"aligned": self.aligned_source, "base": (o.base, o.base_revision)}
        return {
            m: load_runner(*sources[m], vocab_size=self.vocab_size(m), **kwargs) for m in models
        }


def _adapter(options: Any) -> bool:
    return bool(getattr(options, "aligned_adapter", None))


def check_union_layout(union: VocabularyUnion | None, options: Any) -> None:
    """Refuse what the union does not support yet, before any model loads."""
    if union is not None and options.tp > 1:
        raise TdsError(
            f"--tp {options.tp}: the aligned vocabulary ({union.aligned} ids) appends"
            f" {union.aligned - union.base} token(s) to the base one ({union.base} ids), and the"
            " vocabulary-parallel head splits both models' vocabularies into the same slices,"
            " which two sizes do not give; score this pair with --tp 1 (data parallel ranks work)"
        )
