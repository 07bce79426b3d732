"""Context text for each model: what precedes the answer tokens.

The base model sees the bare instruction in a template (the published `plain` one, a URIAL
in-context alignment prefix, nothing, or the user's own Jinja file); the aligned model sees the
prompt it actually answered (`input`, `input-verbatim`) or its tokenizer's chat template (`chat`).

A chat transcript's example carries the messages before the scored assistant turn: the aligned
side renders them with the chat template; the base side renders the conversation (`conversation`
below says exactly how), system messages left out except for a Jinja template, which gets them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import jinja2

from tdsdist.errors import TdsError
from tdsdist.inputs.data import Example

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The published Re-Align base context, character for character (spaces included).
PLAIN_TEMPLATE = "# Query: \n ```{q}``` \n\n \n# Answer: \n ```"
URIAL_QUERY = "\n# Query:\n```\n{q}\n```\n"
URIAL_ANSWER = "\n# Answer:\n```\n"
#: What closes an earlier answer of a conversation before the next query: the published plain
#: template opens the answer with a fence; the URIAL prefix closes each answer with one, as here.
PLAIN_ANSWER_END = "```\n\n"
URIAL_ANSWER_END = "\n```\n"

ContextFn = Callable[[Example], str]


def conversation(ex: Example) -> tuple[list[tuple[str, str]], str]:
    """(earlier (query, answer) exchanges, the last query) of an example; system messages are
    left out. A single-turn example (or a one-turn transcript) has no earlier exchange."""
    if ex.messages is None:
        return [], ex.instruction
    turns = [m["content"] for m in ex.messages if m["role"] != "system"]
    # Validated: user and assistant alternate and the scored turn follows a user turn.
    return list(zip(turns[0:-1:2], turns[1:-1:2])), turns[-1]


def messages_of(ex: Example) -> list[dict[str, str]]:
    """The messages before the answer: a transcript's, or the instruction as one user turn."""
    if ex.messages is None:
        return [{"role": "user", "content": ex.instruction}]
    return [dict(m) for m in ex.messages]


def plain_context(ex: Example) -> str:
    """Each earlier exchange as a published plain block followed by its answer and a closing
    fence (`PLAIN_ANSWER_END`), then the last query's plain block."""
    earlier, query = conversation(ex)
    blocks = [PLAIN_TEMPLATE.format(q=q) + a + PLAIN_ANSWER_END for q, a in earlier]
    return "".join(blocks) + PLAIN_TEMPLATE.format(q=query)


def urial_context(prefix: str, ex: Example) -> str:
    """The URIAL prefix, each earlier exchange as a URIAL query and answer closed by a fence (as
    the prefix closes its own), then the last query and the answer opening."""
    earlier, query = conversation(ex)
    blocks = [URIAL_QUERY.format(q=q) + URIAL_ANSWER + a + URIAL_ANSWER_END for q, a in earlier]
    return prefix + "".join(blocks) + URIAL_QUERY.format(q=query) + URIAL_ANSWER


def bare_context(ex: Example) -> str:
    """`none`: the bare instruction; for a conversation, its turns' texts joined by a blank line."""
    earlier, query = conversation(ex)
    return "\n\n".join([t for pair in earlier for t in pair] + [query])


def base_context_fn(spec: str) -> ContextFn:
    """`plain`, `urial:FILE`, `none`, or a path to a Jinja template with the variables `query`
    (also `instruction`), `id` and `messages` (the turns before the answer, system included)."""
    if spec == "plain":
        return plain_context
    if spec == "none":
        return bare_context
    if spec.startswith("urial:"):
        prefix = _read(spec[len("urial:") :], "URIAL prefix")
        return lambda ex: urial_context(prefix, ex)
    source = _read(spec, "base template")
    try:
        template = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        ).from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TdsError(f"{spec}: invalid Jinja template at line {e.lineno}: {e.message}") from None

    def render(ex: Example) -> str:
        try:
            return template.render(
                query=ex.instruction, instruction=ex.instruction, id=ex.id, messages=messages_of(ex)
            )
        except jinja2.UndefinedError as e:
            raise TdsError(f"{spec}: example {ex.index} (id {ex.id!r}): {e.message}") from None

    return render


def aligned_context_fn(
    spec: str, tokenizer: PreTrainedTokenizerBase, input_field: str = "input"
) -> ContextFn:
    """`input` / `input-verbatim`: the data's prompt verbatim (they differ in tokenization only:
    `plan.tokenize_context`); `chat`: the messages before the answer (one user turn for a
    single-turn example) through the chat template, with the generation prompt."""
    if spec in ("input", "input-verbatim"):

        def verbatim(ex: Example) -> str:
            if ex.prompt is None:
                raise TdsError(
                    f"example {ex.index} (id {ex.id!r}): field '{input_field}' is missing"
                    " (needed by --aligned-template input; use --aligned-template chat)"
                )
            return ex.prompt

        return verbatim
    if spec == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise TdsError(
                "the aligned tokenizer has no chat template: use --aligned-template input"
            )

        def chat(ex: Example) -> str:
            text = tokenizer.apply_chat_template(
                messages_of(ex), tokenize=False, add_generation_prompt=True
            )
            return cast(str, text)  # tokenize=False: the rendered text

        return chat
    raise TdsError(f"unknown aligned template {spec!r}: use 'input', 'input-verbatim' or 'chat'")


def template_fingerprint(spec: str) -> str:
    """The template as it affects results: the spec plus the file's contents where there is one."""
    import hashlib

    path = spec[len("urial:") :] if spec.startswith("urial:") else spec
    if spec in ("plain", "none", "input", "input-verbatim", "chat"):
        return spec
    return f"{spec}#sha256={hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TdsError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TdsError(f"{path}: cannot read the {what} file ({e})") from None
