"""Python access to a store for one's own analysis: `tdsdist.open_store(path)`.

store = tdsdist.open_store("runs/llama2-7b.zarr")
ex = store.example("3")              # dict of numpy arrays, one row per answer position
df = store.dataframe("3")            # the same as a pandas DataFrame (tokens decoded)
ranks = store.array("base/rank")     # the whole zarr array, lazy: slice what you need
store.summary()                      # what `tdsdist analyze --json` prints
store.example("3")["js"]             # exact divergences per position (stores of format 2)
store.inputs("3")                    # the instruction and both models' context ids (and text)
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from tdsdist.metrics import CATEGORIES, categories
from tdsdist.store import DIVERGENCES, MODELS, Store, flat_name

if TYPE_CHECKING:
    import pandas as pd


class TdsStore:
    """Read-only view of a tdsdist store; reading one example reads only its chunks."""

    def __init__(self, path: Path | str) -> None:
        self._store = Store(path, mode="r")

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def ids(self) -> list[str]:
        return self._store.ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._store.meta["config"])

    @cached_property
    def tokenizer(self) -> Any:
        return self._store.tokenizer()

    def array(self, name: str) -> zarr.Array[Any]:
        """A whole per-position array (e.g. `base/rank`), lazy; rows of pending units are fill."""
        return self._store.array(name)

    def committed_rows(self) -> np.ndarray:
        """Boolean mask over the position axis: rows that hold a scored answer position."""
        return self._store.valid_rows()

    @property
    def has_divergences(self) -> bool:
        """Whether the store has the exact divergences (format 2; a 0.1.0 store has only `kl`)."""
        return self._store.has_pair

    def example(self, example_id: str | int) -> dict[str, np.ndarray]:
        """Per-position arrays of one example: every per-position array the store holds, named
        `{group}_{name}` (`positions/...`: `name`; `store.schema` lists them): `token_id`, `kl`,
        `{aligned,base}_{logprob,rank,entropy,top_ids,top_logprobs}` and
        `base_logprobs_at_aligned_top`; with `has_divergences` also `kl_aligned_base`,
        `kl_base_aligned`, `js`, `tv`, `{aligned,base}_ties`, `aligned_logprobs_at_base_top` and
        `aligned_rank_of_base_top1`; in stores of format 3 the stored `published_*` metrics; a
        nudged store (`tdsdist nudge`) also `nudged` (bool: the aligned model chose the token).
        Derived here: `category` (0/1/2), `base_top1_differs` (the base top 1 is not the aligned
        top 1, the positions AlignTDS marks), `{aligned,base}_branching` (exp of the entropy) and
        `base_top1_prob` (the base model's probability of its own top 1)."""
        arrays = self._store.example(self._store.example_index(str(example_id)))
        out = {flat_name(name): values for name, values in arrays.items()}
        for model in MODELS:  # float64: exp of a float32 entropy of up to ~12 nats
            out[f"{model}_branching"] = np.exp(out[f"{model}_entropy"].astype(np.float64))
        out["base_top1_prob"] = np.exp(out["base_top_logprobs"][:, 0].astype(np.float64))
        out["category"] = categories(out["base_rank"])
        out["base_top1_differs"] = out["base_top_ids"][:, 0] != out["aligned_top_ids"][:, 0]
        if "nudged" in out:
            out["nudged"] = out["nudged"].astype(bool)
        return out

    def dataframe(self, example_id: str | int) -> pd.DataFrame:
        """One example as a pandas DataFrame, one row per position, tokens decoded."""
        import pandas as pd

        ex = self.example(example_id)
        frame = pd.DataFrame(
            {
                "t": np.arange(len(ex["token_id"])),
                "token_id": ex["token_id"],
                "token": [self.tokenizer.decode([int(i)]) for i in ex["token_id"]],
                "category": pd.Categorical.from_codes(ex["category"], categories=list(CATEGORIES)),
                "kl": ex["kl"],
                "base_top1_differs": ex["base_top1_differs"],
            }
        )
        for model in MODELS:
            for name in ("logprob", "rank", "entropy") + (
                ("ties",) if self.has_divergences else ()
            ):
                frame[f"{model}_{name}"] = ex[f"{model}_{name}"]
            frame[f"{model}_top_ids"] = list(ex[f"{model}_top_ids"])
        if self.has_divergences:
            for name in DIVERGENCES:
                frame[name] = ex[name]
        return frame

    def inputs(self, example_id: str | int, decode: bool = True) -> dict[str, Any]:
        """What the models saw before the answer: `instruction` (str), `aligned_context` and
        `base_context` (int32 ids) and, with `decode`, `aligned_context_text` and
        `base_context_text` (special tokens kept). None for what the store did not record
        (stores of earlier releases; the base side of a store `generate` recorded, until scored)."""
        from tdsdist.store.contexts import StoredContexts, decode_context

        index = self._store.example_index(str(example_id))
        stored = StoredContexts(self._store)
        out: dict[str, Any] = {"instruction": stored.instruction(index)}
        for model in MODELS:
            ids = stored.ids(index, model)
            out[f"{model}_context"] = ids
            if decode:
                text = None if ids is None else decode_context(self.tokenizer, ids)
                out[f"{model}_context_text"] = text
        return out

    def fields(self) -> dict[str, list[Any]]:
        """The input fields the store kept (`--keep-fields`): `{name: [E] values}` in store
        order; none for a store made before fields were kept."""
        from tdsdist.store.fields import field_names, read_field

        return {name: read_field(self._store, name) for name in field_names(self._store)}

    def summary(self, **kwargs: Any) -> dict[str, Any]:
        """What `analyze --json` prints; `summary(group_by="topic")` adds `groups`."""
        from tdsdist.analysis.summary import summarize

        return summarize(self._store, **kwargs)


def open_store(path: Path | str) -> TdsStore:
    return TdsStore(path)
