"""Context text for each model: what precedes the answer tokens.

The base model sees the bare instruction in a template (the published `plain` one, a URIAL
in-context alignment prefix, nothing, or the user's own Jinja file); the aligned model sees the
prompt it actually answered (`input`) or its tokenizer's chat template (`chat`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jinja2

from tdsdist.errors import TdsError
from tdsdist.inputs.data import Example

# The published Re-Align base context, character for character (spaces included).
PLAIN_TEMPLATE = "# Query: \n ```{q}``` \n\n \n# Answer: \n ```"
URIAL_QUERY = "\n# Query:\n```\n{q}\n```\n"
URIAL_ANSWER = "\n# Answer:\n```\n"

ContextFn = Callable[[Example], str]


def base_context_fn(spec: str) -> ContextFn:
    """`plain`, `urial:FILE`, `none`, or a path to a Jinja template with the variable `query`."""
    if spec == "plain":
        return lambda ex: PLAIN_TEMPLATE.format(q=ex.instruction)
    if spec == "none":
        return lambda ex: ex.instruction
    if spec.startswith("urial:"):
        prefix = _read(spec[len("urial:") :], "URIAL prefix")
        return lambda ex: prefix + URIAL_QUERY.format(q=ex.instruction) + URIAL_ANSWER
    source = _read(spec, "base template")
    try:
        template = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        ).from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TdsError(f"{spec}: invalid Jinja template at line {e.lineno}: {e.message}") from None

    def render(ex: Example) -> str:
        try:
            return template.render(query=ex.instruction, instruction=ex.instruction, id=ex.id)
        except jinja2.UndefinedError as e:
            raise TdsError(f"{spec}: example {ex.index} (id {ex.id!r}): {e.message}") from None

    return render


def aligned_context_fn(spec: str, tokenizer, input_field: str = "input") -> ContextFn:
    """`input`: the data's prompt verbatim; `chat`: one user turn through the chat template."""
    if spec == "input":

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
        return lambda ex: tokenizer.apply_chat_template(
            [{"role": "user", "content": ex.instruction}],
            tokenize=False,
            add_generation_prompt=True,
        )
    raise TdsError(f"unknown aligned template {spec!r}: use 'input' or 'chat'")


def template_fingerprint(spec: str) -> str:
    """The template as it affects results: the spec plus the file's contents where there is one."""
    import hashlib

    path = spec[len("urial:") :] if spec.startswith("urial:") else spec
    if spec in ("plain", "none", "input", "chat"):
        return spec
    return f"{spec}#sha256={hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TdsError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TdsError(f"{path}: cannot read the {what} file ({e})") from None
