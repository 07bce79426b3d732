"""Chat transcripts: records with a `messages` list of {role, content}, scored turn by turn.

Each scored assistant turn is one example whose context is every message before it (`messages`
of the `Example`, system messages included) and whose instruction is the user message just before
it. With `turns="last"` a transcript gives one example, its last assistant turn, under the
record's id; with `turns="all"` every assistant turn is its own example, id `ID/N` with N the
1-based number of the assistant turn in the transcript. Messages after the last assistant turn
are not scored (a prompt for `generate`, by contrast, is the conversation up to its last user turn).
"""

from __future__ import annotations

from typing import Any

from tdsdist.errors import TdsError
from tdsdist.inputs.text import check_unicode

ROLES = ("system", "user", "assistant")
MESSAGES = "messages"
TURNS = ("last", "all")

Message = dict[str, str]


def check_messages(where: str, record: dict[str, Any]) -> list[Message]:
    """The record's messages, each a {role, content} of known role and string content; system
    messages first, then user and assistant alternating, starting with a user turn."""
    if MESSAGES not in record:
        raise TdsError(f"{where}: field '{MESSAGES}' is missing")
    messages = record[MESSAGES]
    if not isinstance(messages, list):
        raise TdsError(
            f"{where}: field '{MESSAGES}' must be a list of {{role, content}} objects, not"
            f" {type(messages).__name__}"
        )
    checked: list[Message] = []
    expected = "user"
    for n, m in enumerate(messages):
        at = f"{where}: field '{MESSAGES}[{n}]'"
        if not isinstance(m, dict):
            raise TdsError(f"{at} must be a {{role, content}} object, not {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise TdsError(f"{at}: '{key}' is missing")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise TdsError(f"{at}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise TdsError(f"{at}: 'content' must be a string, not {type(content).__name__}")
        check_unicode(at, "content", content)
        if role == "system":
            if checked and checked[-1]["role"] != "system":
                raise TdsError(f"{at}: a system message must come before the conversation")
        elif role != expected:
            raise TdsError(
                f"{at}: expected a {expected} turn, got {role} (after any system messages, user"
                " and assistant turns alternate, starting with a user turn)"
            )
        else:
            expected = "assistant" if role == "user" else "user"
        checked.append({"role": role, "content": content})
    return checked


def assistant_turns(where: str, messages: list[Message], turns: str) -> list[tuple[int, int]]:
    """(1-based assistant turn number, index in `messages`) of each turn to score."""
    found = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not found:
        raise TdsError(f"{where}: field '{MESSAGES}' has no assistant turn to score")
    numbered = list(enumerate(found, start=1))
    return numbered if turns == "all" else numbered[-1:]


def prompt_messages(where: str, messages: list[Message]) -> list[Message]:
    """A prompt for `generate`: the conversation up to and including its last user turn."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise TdsError(f"{where}: field '{MESSAGES}' has no user turn to answer")
    return messages[: users[-1] + 1]


def is_transcript(record: object) -> bool:
    return isinstance(record, dict) and MESSAGES in record
