"""One scoring path: a store an earlier release began is finished by `jobs.legacy` and only there.

A half-scored store of each kind that earlier releases wrote (`tests/fixtures/`: format 1 by
tdsdist 0.1.0 itself, format 2 and format 4 by their releases) resumes through `score`, while
every scorer call is watched: which `Scoring` scored each unit, and which module called the
one-model scorer (format 1's two passes) and the pair head. Format 1 must run its passes from
`jobs.legacy` and nowhere else; stores of the current format never reach `jobs.legacy` at all.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from compat_helpers import SCORE, assert_same_store, copy_with_models, run

from tdsdist.engine.scorer import PairScorer, Scorer
from tdsdist.jobs import legacy, scoring
from tdsdist.store import Store

FIXTURES = Path(__file__).parent / "fixtures"


def watch(monkeypatch, cls: type, method: str, seen: list[str], who: Callable[..., str]) -> None:
    """Wrap `cls.method`: each call appends `who(self, caller_module)` to `seen`."""
    original = cls.__dict__[method]

    def spy(self, *args: Any, **kwargs: Any) -> Any:
        seen.append(who(self, sys._getframe(1).f_globals["__name__"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)


@pytest.fixture
def calls(monkeypatch) -> dict[str, list[str]]:
    """Per watched entry point, what called it: the `Scoring` class that scored each unit, and
    the modules that built or ran a one-model scorer or ran the pair head."""
    seen: dict[str, list[str]] = {"units": [], "one-model": [], "pair head": []}
    for cls in (scoring.PairScoring, legacy.Format2Scoring, legacy.TwoPassScoring):
        watch(monkeypatch, cls, "score", seen["units"], lambda self, _: type(self).__name__)
    for method in ("__init__", "score"):
        watch(monkeypatch, Scorer, method, seen["one-model"], lambda _, caller: caller)
    watch(monkeypatch, PairScorer, "score", seen["pair head"], lambda _, caller: caller)
    return seen


@pytest.mark.parametrize(
    "fixture, scored_by",
    [("store-0.1.0", "TwoPassScoring"), ("store-format2", "Format2Scoring")],
)
def test_a_half_scored_old_store_resumes_through_the_legacy_module_only(
    tmp_path, monkeypatch, calls, fixture: str, scored_by: str
) -> None:
    root = copy_with_models(FIXTURES / fixture, tmp_path / fixture)
    version = Store(root / "partial.zarr", mode="r").format_version
    result = run(root, monkeypatch, "score", *SCORE, "--store", "partial.zarr")
    assert result.exit_code == 0, result.output
    assert "1 already committed, 2 to do" in result.output
    assert calls["units"] == [scored_by, scored_by]  # every pending unit, by the legacy scorer
    if version == 1:  # both passes of both units, each built and run from `jobs.legacy`
        assert Counter(calls["one-model"]) == {"tdsdist.jobs.legacy": 2 + 4}
        assert calls["pair head"] == []
    else:
        assert calls["one-model"] == []
        assert set(calls["pair head"]) == {"tdsdist.jobs.scoring"}
    assert_same_store(root / "partial.zarr", root / "complete.zarr")
    assert Store(root / "partial.zarr", mode="r").format_version == version  # its own format


def test_a_store_of_the_current_format_never_reaches_the_legacy_module(
    tmp_path, monkeypatch, calls
) -> None:
    root = copy_with_models(FIXTURES / "store-format4", tmp_path / "format4")
    result = run(root, monkeypatch, "score", *SCORE, "--store", "partial.zarr")
    assert result.exit_code == 0, result.output
    assert calls == {
        "units": ["PairScoring", "PairScoring"],
        "one-model": [],
        "pair head": ["tdsdist.jobs.scoring", "tdsdist.jobs.scoring"],
    }
    assert_same_store(root / "partial.zarr", root / "complete.zarr")
