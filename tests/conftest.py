"""Shared pytest fixtures: tiny offline model pairs built once per session.

Building and saving a pair takes a fraction of a second, but many tests read the same folders,
so they are session-scoped and must be treated as read-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tdsdist_testkit import save_tiny_pair

#: Vocabulary of the models in `tiny_pair_odd_vocab`: the 301-token tokenizer padded to a
#: multiple of 64, as real checkpoints pad theirs.
ODD_MODEL_VOCAB_SIZE = 320


@pytest.fixture(scope="session", autouse=True)
def torch_threads() -> Iterator[None]:
    """Run torch on one thread: tiny models are faster so, and results do not depend on cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(aligned, base) checkpoint folders sharing a 301-token tokenizer."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"), vocab_size=301, seed=0)


@pytest.fixture(scope="session")
def tiny_pair_odd_vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(aligned, base) folders whose models have more vocabulary rows than the tokenizer has
    tokens (301 tokens, 320 rows), to check that padded logits are ignored."""
    return save_tiny_pair(
        tmp_path_factory.mktemp("tiny_pair_odd_vocab"),
        vocab_size=301,
        seed=0,
        model_vocab_size=ODD_MODEL_VOCAB_SIZE,
    )
