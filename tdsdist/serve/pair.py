"""The served pair (`jobs.pair.ResolvedPair`) and a request's text made into its model inputs.

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
from tdsdist.engine.scorer import AnswerPair
from tdsdist.errors import TdsError
from tdsdist.inputs import special_text
from tdsdist.inputs.data import Example
from tdsdist.inputs.plan import context_tokens, make_plan
from tdsdist.jobs.pair import ResolvedPair


class RequestError(ValueError):
    """A request the pair cannot take (too long, empty): a 4xx, one line."""


@dataclass
class PairInputs:
    """The served pair (`jobs.pair.ResolvedPair`, resolved before any model loads) and how a
    request's text becomes its contexts and answer ids."""

    config: ScoreConfig
    pair: ResolvedPair
    split_special_text: bool
    """A special token's text in a request is text (`special_text.SPLIT`), as in `score`."""

    @classmethod
    def load(cls, config: ScoreConfig) -> PairInputs:
        """The pair resolved and checked as `jobs.prepare.prepare` resolves it."""
        pair = ResolvedPair.resolve(config)
        for model in ("aligned", "base"):
            pair.window(model)  # a model without its config fails here, before loading
        return cls(config, pair, config.special_tokens_in_text != special_text.PARSE)

    @property
    def tokenizer(self) -> Any:
        """The aligned tokenizer (answers are written and shown with it)."""
        return self.pair.tokenizer

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
        assert self.pair.base_context is not None  # resolved with the base
        try:
            plan = make_plan(
                [self.example(messages, answer)],
                self.tokenizer,
                self.pair.aligned_context,
                self.pair.base_context,
                aligned_special_tokens=config.aligned_template in ("input", "input-verbatim"),
                aligned_keep_double_bos=config.aligned_template == "input-verbatim",
                aligned_window=self.pair.window("aligned"),
                base_window=self.pair.window("base"),
                max_output_tokens=None,
                truncate_context=False,
                unit_size=1,
                base_tokenizer=None if self.pair.union is None else self.pair.base_tokenizer,
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
        split, pair = self.split_special_text, self.pair
        assert pair.base_context is not None  # resolved with the base
        contexts = {
            "aligned": context_tokens(
                self.tokenizer, pair.aligned_context, ex, special, keep_double, split
            ),
            "base": context_tokens(pair.base_tokenizer, pair.base_context, ex, True, False, split),
        }
        for model, ids in contexts.items():
            if not ids:
                raise RequestError(f"the {model} context is empty")
            window = pair.window(model)
            if len(ids) + max_new_tokens > window:
                raise RequestError(
                    f"the {model} context ({len(ids)} tokens) plus max_new_tokens"
                    f" ({max_new_tokens}) exceed the model's window ({window})"
                )
        return contexts
