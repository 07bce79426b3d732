"""The example page's inputs and filters: what the models saw, and which positions the summary
left out.

The report's summary is computed with `analyze`'s filters (`--exclude-first`,
`--exclude-special-tokens`); each example page marks the positions those filters left out, by the
rule `summary.summarize` applies (a position is out when it is among its answer's first N, or its
token is one of the stored tokenizer's special ids), so that a reader sees which tokens the
numbers do not count. The contexts come from the store (`store/contexts.py`), decoded with their
special tokens, so the template shows as the model read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdsdist.analysis_options import Filters
from tdsdist.store import MODELS, Store
from tdsdist.store.contexts import StoredContexts, decode_context


def special_ids(store: Store, filters: Filters) -> np.ndarray:
    """The ids `--exclude-special-tokens` leaves out (none without it), as `summarize` takes them."""
    return filters.special_ids(store.tokenizer)


def excluded_positions(filters: Filters, token_ids: np.ndarray, special: np.ndarray) -> np.ndarray:
    """`[n]` bool: the positions of one answer that the filters leave out of the summary."""
    return ~filters.keep(np.arange(len(token_ids)), token_ids, special)


def filters_record(filters: Filters, special: np.ndarray, tokenizer: Any) -> dict[str, Any] | None:
    """What the pages say about the filters; None when nothing is left out."""
    if not filters.exclude_first and not filters.exclude_special_tokens:
        return None
    return {
        "exclude_first": filters.exclude_first,
        "exclude_special_tokens": filters.exclude_special_tokens,
        "special_ids": [int(i) for i in special],
        "special_tokens": tokenizer.convert_ids_to_tokens([int(i) for i in special]),
    }


def inputs_for_page(stored: StoredContexts, index: int, tokenizer: Any) -> dict[str, Any]:
    """`instruction` and per model `{"text", "n"}` (the context, special tokens kept), each
    None where the store did not record it."""
    contexts: dict[str, Any] = {}
    for model in MODELS:
        ids = stored.ids(index, model)
        contexts[model] = (
            None if ids is None else {"text": decode_context(tokenizer, ids), "n": len(ids)}
        )
    return {"instruction": stored.instruction(index), "contexts": contexts}
