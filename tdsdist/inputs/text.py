"""Checks of the strings a data file holds, whatever its format: each must be text a tokenizer
can take."""

from __future__ import annotations

from tdsdist.errors import TdsError


def check_unicode(where: str, name: str, value: str) -> None:
    """JSON's `\\ud800` escapes can make strings no tokenizer (nor UTF-8) can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TdsError(
            f"{where}: field '{name}' holds an unpaired surrogate (a lone \\u{ord(value[e.start]):04x}"
            f" escape) at character {e.start}"
        ) from None
