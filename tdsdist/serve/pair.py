"""The served pair: tokenizers, templates and windows (before any model loads), then the runners.

A request's text becomes contexts and answer ids exactly as `score` makes them from a data file
(`inputs.plan.make_plan` on one `Example`), so `/v1/score` gives what `score` then `show --json`
give. Text from users never becomes control tokens: a special token's text (`<|im_start|>`,
`</s>`) in an instruction, message or answer is tokenized as its characters, as `score` does
(`inputs.special_text`), unless the server runs with `--special-tokens-in-text parse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdsdist.config import ScoreConfig
from tdsdist.engine.adapters import tokenizer_source
from tdsdist.engine.models import load_model_config, model_window
from tdsdist.engine.scorer import AnswerPair
from tdsdist.errors import TdsError
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Example
from tdsdist.inputs.plan import context_tokens, make_plan
from tdsdist.inputs.templates import ContextFn, aligned_context_fn, base_context_fn
from tdsdist.inputs.tokenizer import compare_vocabularies, load_tokenizer
from tdsdist.jobs.prepare import check_union_layout
from tdsdist.parallel.dist import Dist


class RequestError(ValueError):
    """A request the pair cannot take (too long, empty): a 4xx, one line."""


@dataclass
class PairInputs:
    """Everything about the pair's inputs, known before any model loads."""

    config: ScoreConfig
    tokenizer: Any  # the aligned one
    base_tokenizer: Any
    union: Any
    windows: dict[str, int]
    aligned_context: ContextFn
    base_context: ContextFn
    split_special_text: bool
    """A special token's text in a request is text (`special_text.SPLIT`), as in `score`."""

    @classmethod
    def load(cls, config: ScoreConfig) -> PairInputs:
        """The tokenizers and windows, checked as `jobs.prepare.prepare` checks them."""
        name, revision = config.aligned, config.aligned_revision
        if config.aligned_adapter:
            name = tokenizer_source(config.aligned, config.aligned_adapter, config.base)
            revision = config.base_revision if name == config.base else revision
        assert name is not None
        tok = load_tokenizer(name, revision, config.trust_remote_code)
        base_tok = load_tokenizer(config.base, config.base_revision, config.trust_remote_code)
        union = compare_vocabularies(tok, base_tok, name, config.base)
        check_union_layout(union, config)
        if config.top_k > min(len(tok), len(base_tok)):
            raise TdsError(f"--top-k {config.top_k} exceeds the vocabulary size")
        base_cfg = load_model_config(config.base, config.base_revision, config.trust_remote_code)
        aligned_cfg = base_cfg
        if not config.aligned_adapter:
            aligned_cfg = load_model_config(name, revision, config.trust_remote_code)
        windows = {
            "aligned": model_window(aligned_cfg, tok),
            "base": model_window(base_cfg, base_tok),
        }
        return cls(
            config,
            tok,
            base_tok,
            union,
            windows,
            aligned_context_fn(config.aligned_template, tok),
            base_context_fn(config.base_template),
            config.special_tokens_in_text != special_text.PARSE,
        )

    def vocab_size(self, model: str) -> int:
        return len(self.tokenizer) if self.union is None else getattr(self.union, model)

    def example(self, messages: list[dict[str, str]], answer: str) -> Example:
        """One example as a chat transcript's: `messages` before the answer, the last a user's."""
        return Example(
            index=0,
            id="request",
            instruction=messages[-1]["content"],
            prompt=messages[-1]["content"],
            answer=answer,
            messages=tuple(messages) if len(messages) > 1 else None,
        )

    def answer_pair(self, messages: list[dict[str, str]], answer: str) -> AnswerPair:
        """The contexts and answer ids `score` makes of this instruction and answer."""
        config = self.config
        try:
            plan = make_plan(
                [self.example(messages, answer)],
                self.tokenizer,
                self.aligned_context,
                self.base_context,
                aligned_special_tokens=config.aligned_template in ("input", "input-verbatim"),
                aligned_keep_double_bos=config.aligned_template == "input-verbatim",
                aligned_window=self.windows["aligned"],
                base_window=self.windows["base"],
                max_output_tokens=None,
                truncate_context=False,
                unit_size=1,
                base_tokenizer=None if self.union is None else self.base_tokenizer,
                split_special_text=self.split_special_text,
            )
        except TdsError as e:
            raise RequestError(str(e).replace("example 0 (id 'request'): ", "")) from None
        item = plan.items[0]
        return AnswerPair(item.aligned_context, item.base_context, item.answer)

    def contexts(self, messages: list[dict[str, str]], max_new_tokens: int) -> dict[str, list[int]]:
        """Both models' contexts for an answer still to write, `max_new_tokens` long at most."""
        ex = self.example(messages, "")
        special = self.config.aligned_template in ("input", "input-verbatim")
        keep_double = self.config.aligned_template == "input-verbatim"
        split = self.split_special_text
        contexts = {
            "aligned": context_tokens(
                self.tokenizer, self.aligned_context, ex, special, keep_double, split
            ),
            "base": context_tokens(self.base_tokenizer, self.base_context, ex, True, False, split),
        }
        for model, ids in contexts.items():
            if not ids:
                raise RequestError(f"the {model} context is empty")
            if len(ids) + max_new_tokens > self.windows[model]:
                raise RequestError(
                    f"the {model} context ({len(ids)} tokens) plus max_new_tokens"
                    f" ({max_new_tokens}) exceed the model's window ({self.windows[model]})"
                )
        return contexts


def load_runners(config: ScoreConfig, inputs: PairInputs, device, d: Dist) -> dict[str, Any]:
    """Both runners as `score` loads them (an adapter shares the base weights; `--tp` splits)."""
    from tdsdist.jobs.score import load_model_runner
    from tdsdist.parallel.loading import load_adapter_runners

    head_dtype = config.head_dtype or "float32"
    if config.aligned_adapter:
        return load_adapter_runners(
            config.base,
            config.base_revision,
            config.aligned_adapter,
            dtype=config.dtype,
            vocab_size=inputs.vocab_size("base"),
            device=device,
            d=d,
            trust_remote_code=config.trust_remote_code,
            head_dtype=head_dtype,
        )
    return {
        m: load_model_runner(config, m, inputs.vocab_size(m), device, d, head_dtype)
        for m in ("aligned", "base")
    }
