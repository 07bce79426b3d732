"""The measures per position (`analysis/measures.py`) and the groups (`analysis/groups.py`)
against direct computations over `show --json` of every example."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

from tdsdist.cli import main

MAX_T = 3
GROUPS = ["harmful"] * 5 + ["benign"] * 6 + ["rare"]  # "rare": too few examples for an interval


def _records() -> list[dict]:
    words = ["fine", "a short answer", "yes", "not quite so", "maybe later", "of course"]
    return [
        {
            "id": f"q{i}",
            "pure_input": f"Q{i}?",
            "input": f"<|user|>\nQ{i}?\n<|assistant|>\n",
            "output": f"{words[i % len(words)]} and {words[(3 * i) % len(words)]} {i}.",
            "topic": GROUPS[i],
            "level": i % 3,
        }
        for i in range(len(GROUPS))
    ]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("measures")
    data = folder / "data.json"
    data.write_text(json.dumps(_records()), encoding="utf-8")
    aligned, base = tiny_pair
    cli(*cli_args("score", aligned, base, data=data, store=folder / "s.zarr", unit_size=4, top_k=5))
    return folder / "s.zarr"


def shown(store: Path) -> list[dict]:
    return [
        json.loads(cli("show", str(store), "--example", f"q{i}", "--json"))
        for i in range(len(GROUPS))
    ]


def position_values(record: dict) -> dict[str, list[float]]:
    """Every measure of one example, per position, from its `show --json` record."""
    p = record["positions"]
    out = {
        "aligned_entropy": [x["aligned"]["entropy"] for x in p],
        "base_entropy": [x["base"]["entropy"] for x in p],
        "base_top1_prob": [math.exp(x["base"]["top_logprobs"][0]) for x in p],
        "base_prob": [math.exp(x["base"]["logprob"]) for x in p],
    }
    for name in ("kl_aligned_base", "kl_base_aligned", "js", "tv"):
        out[name] = [x["divergence"][name] for x in p]
    return out


def pooled(records: list[dict], name: str, t: int | None = None) -> float:
    values = [
        v
        for r in records
        for s, v in enumerate(position_values(r)[name])
        if t is None or s == t or (t > MAX_T and s > MAX_T)
    ]
    return float(np.mean(values))


def assert_in_ci(entry: dict) -> None:
    lo, hi = entry["ci"]
    value = entry.get("mean", entry.get("fraction"))
    assert lo <= value * (1 + 1e-6) + 1e-12 and value <= hi * (1 + 1e-6) + 1e-12, entry


def test_measures_by_position_equal_show_json(scored: Path) -> None:
    records = shown(scored)
    summary = json.loads(cli("analyze", str(scored), "--json", "--max-t", str(MAX_T)))
    names = (
        "aligned_entropy",
        "base_entropy",
        "base_top1_prob",
        "base_prob",
        "kl_aligned_base",
        "kl_base_aligned",
        "js",
        "tv",
    )
    for row in summary["by_position"]:
        for name in names:
            entry = row[f"mean_{name}"]
            # float32 sums per (example, position) cell: relative error ~1e-7 per addition
            assert entry["mean"] == pytest.approx(pooled(records, name, row["t"]), rel=1e-5)
            assert_in_ci(entry)
        for model in ("aligned", "base"):  # exp of the mean entropy, the interval exp'd too
            bf, h = row[f"{model}_branching"], row[f"mean_{model}_entropy"]
            assert bf["mean"] == pytest.approx(math.exp(h["mean"]), rel=1e-12)
            assert bf["ci"] == pytest.approx([math.exp(x) for x in h["ci"]], rel=1e-12)
    for name in ("kl_aligned_base", "kl_base_aligned", "js", "tv"):
        entry = summary["divergence"][name]
        assert entry["mean"] == pytest.approx(pooled(records, name), rel=1e-5)
        assert_in_ci(entry)
    for name in ("aligned_entropy", "base_entropy", "base_top1_prob"):
        entry = summary["measures"][name]
        assert entry["mean"] == pytest.approx(pooled(records, name), rel=1e-5)
        assert_in_ci(entry)
    assert summary["measures"]["base_branching"]["mean"] == pytest.approx(
        math.exp(pooled(records, "base_entropy")), rel=1e-5
    )
    for row in summary["by_position_bucket"] + summary["by_relative_position"]:
        if row["positions"]:
            lo, hi = row["shifted_ci"]
            assert lo <= row["shifted_fraction"] <= hi
    text = cli("analyze", str(scored), "--max-t", str(MAX_T))
    assert "branching factor" in text and "exact kl_aligned_base" in text
    assert "top-k + tail lower bound" in text


def test_show_json_has_each_models_entropy(scored: Path) -> None:
    from tdsdist.store import Store

    store = Store(scored, mode="r")
    record = shown(scored)[2]
    rows = store.rows(2)
    for model in ("aligned", "base"):
        want = store.read(f"{model}/entropy", rows).tolist()
        assert [p[model]["entropy"] for p in record["positions"]] == want


def test_groups_equal_direct_computations(scored: Path) -> None:
    records = shown(scored)
    summary = json.loads(
        cli("analyze", str(scored), "--json", "--max-t", str(MAX_T), "--group-by", "topic")
    )
    groups = {g["group"]: g for g in summary["groups"]["groups"]}
    assert sorted(groups) == ["benign", "harmful", "rare"]
    for label, g in groups.items():
        mine = [r for r, topic in zip(records, GROUPS) if topic == label]
        assert g["examples"] == len(mine)
        assert g["positions"] == sum(len(r["positions"]) for r in mine)
        cats = [p["category"] for r in mine for p in r["positions"]]
        s = g["statistics"]
        assert s["shifted"]["fraction"] == pytest.approx(cats.count("shifted") / len(cats))
        for name in ("js", "kl_aligned_base", "aligned_entropy", "base_top1_prob"):
            assert s[f"mean_{name}"]["mean"] == pytest.approx(pooled(mine, name), rel=1e-5)
        assert s["base_branching"]["mean"] == pytest.approx(
            math.exp(pooled(mine, "base_entropy")), rel=1e-5
        )
        for row in g["by_position"][:MAX_T]:
            assert row["mean_js"]["mean"] == pytest.approx(pooled(mine, "js", row["t"]), rel=1e-5)
        if label == "rare":  # one example: values, no interval, and the reason said
            assert g["interval"] == "too few examples for an interval (1 < 5)"
            assert s["shifted"]["ci"] == [None, None] and s["mean_js"]["ci"] == [None, None]
        else:
            assert g["interval"] is None
            for name in ("shifted", "mean_js", "mean_kl_aligned_base", "base_branching"):
                assert_in_ci(s[name])
    # Differences against the first group large enough ("benign"): value and two-sample CI.
    diffs = {(d["group"], d["statistic"]): d for d in summary["groups"]["differences"]}
    d = diffs[("harmful", "mean_js")]
    assert d["reference"] == "benign"
    want = (
        groups["harmful"]["statistics"]["mean_js"]["mean"]
        - groups["benign"]["statistics"]["mean_js"]["mean"]
    )
    assert d["difference"] == pytest.approx(want, rel=1e-9)
    assert d["ci"][0] <= d["difference"] <= d["ci"][1]
    bf = diffs[("harmful", "base_branching")]  # exp of each group's mean entropy, differenced
    h = {
        g: math.exp(pooled([r for r, t in zip(records, GROUPS) if t == g], "base_entropy"))
        for g in ("harmful", "benign")
    }
    assert bf["difference"] == pytest.approx(h["harmful"] - h["benign"], rel=1e-4, abs=1e-6)
    assert bf["ci"][0] <= bf["difference"] <= bf["ci"][1]
    rare = diffs[("rare", "mean_js")]
    assert rare["ci"] == [None, None] and "too few examples" in rare["interval"]
    text = cli("analyze", str(scored), "--group-by", "topic", "--resamples", "50")
    assert "by topic" in text and "too few examples for an interval (1 < 5)" in text


def test_group_by_a_missing_field_is_one_line(scored: Path) -> None:
    for command in (
        ["analyze"],
        ["compare"],
        ["figures", "-o", str(scored.parent / "f")],
        ["export", "-o", str(scored.parent / "x.parquet")],
    ):
        result = CliRunner().invoke(
            main, [command[0], str(scored), *command[1:], "--group-by", "nope"]
        )
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "no kept field 'nope'" in lines[0] and "level, topic" in lines[0]


def test_export_has_the_kept_fields_and_the_group(scored: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from tdsdist.analysis.export import COLUMNS

    out = tmp_path / "x.parquet"
    cli("export", str(scored), "-o", str(out), "--group-by", "level")
    table = pq.read_table(out)
    assert table.column_names == [*COLUMNS, "field_level", "field_topic", "group"]
    assert str(table.schema.field("field_level").type) == "int64"
    records = _records()
    example = table.column("example_index").to_pylist()
    assert table.column("field_topic").to_pylist() == [records[e]["topic"] for e in example]
    assert table.column("field_level").to_pylist() == [records[e]["level"] for e in example]
    assert table.column("group").to_pylist() == [str(records[e]["level"]) for e in example]


def test_figures_and_compare_by_group(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    cli("figures", str(scored), "-o", str(out), "--group-by", "topic", "--resamples", "50")
    index = json.loads((out / "figures.json").read_text())
    assert index["labels"] == ["benign", "harmful", "rare"]
    kinds = [f["kind"] for f in index["figures"]]
    assert "branching_by_position" in kinds and "divergences_by_position" in kinds
    assert "rank_histogram" not in kinds  # not kept per group: left out, not drawn store-wide
    for f in index["figures"]:
        for name in f["files"]:
            assert (out / name).stat().st_size > 1000, name
    result = json.loads(
        cli(
            "compare",
            str(scored),
            str(scored),
            "--json",
            "--group-by",
            "topic",
            "--resamples",
            "50",
        )
    )
    by_group = {g["group"]: g for g in result["paired_by_group"]}
    assert by_group["harmful"]["shared_examples"] == 5 and by_group["rare"]["interval"]
    for g in by_group.values():  # a store against itself: every difference is exactly 0
        for row in g["rows"]:
            assert row["difference"] in (0.0, None)
    assert len(result["summaries"][0]["groups"]["groups"]) == 3


def test_keep_fields_choices_and_resume(tiny_pair, tmp_path: Path) -> None:
    """`all` leaves out long strings; `none` keeps none; named fields must exist. The fields are
    outside the fingerprint: a store made without them resumes under any --keep-fields."""
    from tdsdist.store import Store
    from tdsdist.store.fields import field_names, read_field

    records = _records()[:4]
    for r in records:
        r["notes"] = "x" * 300  # a text, not a label
        r["tags"] = ["a", "b"]  # not a scalar
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    aligned, base = tiny_pair

    def score(store: str, *extra: str) -> CliRunner:
        args = cli_args("score", aligned, base, data=data, store=tmp_path / store, unit_size=2)
        args += extra
        return CliRunner().invoke(main, args)

    assert score("all.zarr").exit_code == 0
    store = Store(tmp_path / "all.zarr", mode="r")
    assert field_names(store) == ["level", "topic"]
    assert read_field(store, "level") == [r["level"] for r in records]
    assert score("named.zarr", "--keep-fields", "notes").exit_code == 0  # named: kept whatever
    assert field_names(Store(tmp_path / "named.zarr", mode="r")) == ["notes"]
    bad = score("bad.zarr", "--keep-fields", "topic,nope")
    assert bad.exit_code == 2 and "no record has a scalar field 'nope'" in bad.output
    assert not (tmp_path / "bad.zarr").exists()
    assert score("none.zarr", "--keep-fields", "none").exit_code == 0
    assert field_names(Store(tmp_path / "none.zarr", mode="r")) == []
    again = score("none.zarr")  # resumes (same fingerprint), keeps what it was made with
    assert again.exit_code == 0, again.output
    assert field_names(Store(tmp_path / "none.zarr", mode="r")) == []


def test_generate_keeps_the_prompts_fields(tiny_pair, tmp_path: Path) -> None:
    from tdsdist.store import Store
    from tdsdist.store.fields import read_field

    prompts = [
        {"id": r["id"], "pure_input": r["pure_input"], "topic": r["topic"]} for r in _records()[:3]
    ]
    data = tmp_path / "prompts.json"
    data.write_text(json.dumps(prompts), encoding="utf-8")
    out, store = tmp_path / "answers.json", tmp_path / "g.zarr"
    cli(*cli_args("generate", *tiny_pair, data=data, out=out, store=store, max_new_tokens=4))
    answers = json.loads(out.read_text())
    assert [a["topic"] for a in answers] == [p["topic"] for p in prompts]
    kept = Store(store, mode="r")
    assert read_field(kept, "topic") == [p["topic"] for p in prompts if p["id"] in kept.ids]


def test_python_api(scored: Path) -> None:
    import tdsdist

    store = tdsdist.open_store(scored)
    assert store.fields() == {
        "level": [r["level"] for r in _records()],
        "topic": [r["topic"] for r in _records()],
    }
    record = shown(scored)[1]
    ex = store.example("q1")
    values = position_values(record)
    np.testing.assert_allclose(ex["base_top1_prob"], values["base_top1_prob"], rtol=1e-12)
    np.testing.assert_allclose(
        ex["aligned_branching"], np.exp(values["aligned_entropy"]), rtol=1e-12
    )
    summary = store.summary(group_by="topic", resamples=50)
    assert [g["group"] for g in summary["groups"]["groups"]] == ["benign", "harmful", "rare"]
    assert summary["measures"]["base_branching"]["mean"] > 0


def test_every_record_kind_carries_its_scalar_fields(tmp_path: Path) -> None:
    from tdsdist.inputs.data import read_data

    chat = [
        {
            "id": "c",
            "topic": "harmful",
            "n": 2,
            "tags": ["x"],
            "messages": [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And?"},
                {"role": "assistant", "content": "Bye."},
            ],
        }
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    for ex in read_data(path, turns="all").examples:
        assert ex.metadata == (("topic", "harmful"), ("n", 2))
    path = tmp_path / "je.json"
    path.write_text(json.dumps(_records()[:1]), encoding="utf-8")
    (ex,) = read_data(path).examples
    assert ex.metadata == (("topic", "harmful"), ("level", 0))
