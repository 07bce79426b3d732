"""The heads' result containers share this base: tensors of N rows, one field per statistic,
split, joined and converted here and nowhere else (vLLM's `LogprobsTensors` carries its own
`tolists` and `to_cpu` the same way).

Each field is one per-position array of the store (`store/schema.py`): a subclass says which
(`column_of`), and the conversion to numpy takes that column's dtype from the schema, so a head
never decides a dtype of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch

from tdsdist.store.schema import Column

Rows = TypeVar("Rows", bound="RowTensors")


@dataclass
class RowTensors:
    """Fields of `[N]` or `[N, k]` tensors (None: not computed, e.g. no support ids given)."""

    def _items(self) -> dict[str, Any]:  # Tensor, or None for an optional field
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_cpu(self: Rows) -> Rows:
        return type(self)(**{k: None if v is None else v.cpu() for k, v in self._items().items()})

    def split(self: Rows, sizes: list[int]) -> list[Rows]:
        """Consecutive pieces of `sizes` rows (one per sequence of a batch)."""
        parts = {k: None if v is None else torch.split(v, sizes) for k, v in self._items().items()}
        return [
            type(self)(**{k: None if v is None else v[j] for k, v in parts.items()})
            for j in range(len(sizes))
        ]

    @classmethod
    def cat(cls: type[Rows], parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        items = [p._items() for p in parts]
        return cls(
            **{
                k: None if items[0][k] is None else torch.cat([i[k] for i in items])
                for k in items[0]
            }
        )

    @classmethod
    def column_of(cls, field: str) -> Column:
        """The store column (`store/schema.py`) that field `field` is written to."""
        raise NotImplementedError

    def by_field(self) -> dict[str, np.ndarray]:
        """Field name -> numpy array in its store array's dtype (fields that are None left out)."""
        out = {}
        for name, value in self._items().items():
            if value is not None:
                dtype = getattr(torch, self.column_of(name).dtype)
                out[name] = value.to(dtype).cpu().numpy()
        return out
