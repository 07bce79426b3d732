"""`nudge`: the two limits exactly, the rules against the stored distributions, the store against
`score` of its answers, `show --json`'s `nudged`, resume after a kill, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from tdsdist_testkit import assert_float32_close
from tdsdist_testkit.cli_args import cli_args
from transformers import AutoModelForCausalLM, AutoTokenizer

import tdsdist
from tdsdist.cli import main
from tdsdist.config import NudgeConfig, ScoreConfig, build_config, load_yaml
from tdsdist.engine.decoder import Decoder, Sampling
from tdsdist.engine.runner import ModelRunner
from tdsdist.inputs.data import load_examples
from tdsdist.inputs.plan import tokenize_context
from tdsdist.inputs.templates import base_context_fn
from tdsdist.jobs.demo import demo_data_path
from tdsdist.jobs.prepare import prepare
from tdsdist.store import Store
from tdsdist.store.contexts import StoredContexts

K, LIMIT, NEW = 5, 5, 12


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result


def nudge(pair, folder: Path, name: str, *extra: str) -> tuple[Path, Path]:
    out, store = folder / f"{name}.json", folder / f"{name}.zarr"
    invoke(
        *cli_args(
            "nudge",
            *pair,
            out=out,
            store=store,
            limit=LIMIT,
            unit_size=2,
            batch_size=3,
            max_new_tokens=NEW,
            top_k=K,
            extra=extra,
        )
    )
    return out, store


def invoke_export(store: Path, parquet: Path) -> Path:
    invoke("export", str(store), "-o", str(parquet))
    return parquet


def store_answers(store: Store) -> dict[str, list[int]]:
    return {
        i: store.read("positions/token_id", store.rows(e)).tolist() for e, i in enumerate(store.ids)
    }


@pytest.fixture(scope="module")
def nudged(tiny_pair, tmp_path_factory):
    return nudge(
        tiny_pair, tmp_path_factory.mktemp("nudge"), "n", "--nudge-threshold", "0.4", "--compare"
    )


def test_threshold_one_is_the_aligned_models_generate(tiny_pair, tmp_path: Path) -> None:
    out, store = nudge(tiny_pair, tmp_path, "one", "--nudge-threshold", "1")
    gen = tmp_path / "gen.json"
    invoke(*cli_args("generate", tiny_pair[0], out=gen, limit=LIMIT, max_new_tokens=NEW))
    got, want = json.loads(out.read_text()), json.loads(gen.read_text())
    assert [r["output"] for r in got] == [r["output"] for r in want]
    assert [r["input"] for r in got] == [r["input"] for r in want]
    assert all(r["nudged_fraction"] == 1.0 for r in got if r["output"][0])
    s = Store(store, mode="r")
    assert s.nudged and bool(np.all(s.read("positions/nudged")[s.valid_rows()] == 1))


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_threshold_zero_is_the_base_models_own_answer(tiny_pair, tmp_path: Path, sampled) -> None:
    """Greedy: the base model's own greedy answer; sampled: its own sampling from the prompt's
    seeded generator (`seed * 1_000_003 + index`), one prompt at a time."""
    sampling = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"] if sampled else []
    out, store = nudge(tiny_pair, tmp_path, "zero", "--nudge-threshold", "0", *sampling)
    tok = AutoTokenizer.from_pretrained(tiny_pair[1])
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32).eval()
    runner = ModelRunner(model, len(tok), torch.device("cpu"), head_dtype="float32")
    decoder = Decoder(runner, tok, Sampling(NEW, 0.8 if sampled else 0.0, 0.9 if sampled else 1.0))
    plain = base_context_fn("plain")
    s = Store(store, mode="r")
    recorded = store_answers(s)
    for ex, record in zip(
        load_examples(demo_data_path(), limit=LIMIT), json.loads(out.read_text())
    ):
        seed = 3 * 1_000_003 + ex.index if sampled else 0
        want = decoder.generate([tokenize_context(tok, plain(ex), True)], seed)[0].ids
        assert recorded.get(ex.id, []) == want
        assert record["output"] == [tok.decode(want)] and record["nudged_fraction"] == 0.0
    assert bool(np.all(s.read("positions/nudged")[s.valid_rows()] == 0))


def test_threshold_rule_and_compare_against_the_stored_distributions(nudged) -> None:
    out, path = nudged
    s = Store(path, mode="r")
    rows = s.valid_rows()
    flags = s.read("positions/nudged")[rows]
    top1 = np.exp(s.read("base/top_logprobs")[rows][:, 0].astype(np.float64))
    clear = np.abs(top1 - 0.4) > 1e-4  # away from the threshold: float32 error cannot flip it
    np.testing.assert_array_equal(flags[clear], (top1 < 0.4)[clear])
    assert 0 < flags.mean() < 1  # both models wrote
    records = json.loads(out.read_text())
    for e, example_id in enumerate(s.ids):
        record = next(r for r in records if r["id"] == example_id)
        f = s.read("positions/nudged", s.rows(e))
        assert record["nudged_fraction"] == pytest.approx(f.mean())
        assert record["nudged_tokens"] == int(f.sum())
        # --compare: the aligned model's mean log-probability of the nudged answer's tokens
        mean = s.read("examples/aligned_mean_nudged_logprob")[e]
        assert_float32_close(
            np.float32(mean), np.float32(s.read("aligned/logprob", s.rows(e)).mean())
        )
    assert "base_only_output" in records[0]
    compare = s.meta["nudge"]["compare"]
    assert compare["nudged_logprob"] > compare["base_only_logprob"]


def test_shifted_rule(tiny_pair, tmp_path: Path) -> None:
    _, path = nudge(tiny_pair, tmp_path, "shifted", "--nudge-rule", "shifted")
    s = Store(path, mode="r")
    rows = s.valid_rows()
    aligned_top1 = s.read("aligned/top_ids")[rows][:, 0]
    base_top3 = s.read("base/top_ids")[rows][:, :3]
    want = ~(base_top3 == aligned_top1[:, None]).any(-1)
    np.testing.assert_array_equal(s.read("positions/nudged")[rows], want.astype(np.int8))


def test_the_store_equals_score_of_its_answers(tiny_pair, nudged, tmp_path: Path) -> None:
    """`score` with the same contexts re-scores every unit of a copy (teacher-forced, on the
    decoded ids, which the answers' text need not re-tokenize to): the same numbers."""
    out, path = nudged
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    redo = Store(copy)
    for unit in redo.units():
        redo.mark_pending(unit.index)
    for name in redo.array_names():  # nothing left of the decoded numbers but the ids, flags
        if name not in ("positions/token_id", "positions/nudged"):
            redo.root[name][:] = redo.root[name].fill_value
    invoke(
        *cli_args(
            "score",
            *tiny_pair,
            data=out,
            store=copy,
            aligned_template="chat",
            base_template="plain",
            top_k=K,
            unit_size=2,
            skip_empty_answers=True,
        )
    )
    got, want = Store(path, mode="r"), Store(copy, mode="r")
    assert want.committed().all() and got.committed().all()
    rows = got.valid_rows()
    for name in want.array_names():
        a, b = got.read(name)[rows], want.read(name)[rows]
        assert np.isfinite(b.astype(np.float64)).any(), name
        if a.dtype.kind in "iu":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert_float32_close(a, b, scale=8.0, err_msg=name)
    contexts = StoredContexts(got)
    prep = prepare(
        ScoreConfig(
            aligned=str(tiny_pair[0]),
            base=str(tiny_pair[1]),
            data=str(out),
            store="-",
            aligned_template="chat",
            base_template="plain",
            skip_empty_answers=True,
        )
    )
    for e, item in enumerate(prep.plan.items):  # the contexts `score` makes from the answers
        assert contexts.ids(e, "aligned").tolist() == item.aligned_context
        assert contexts.ids(e, "base").tolist() == item.base_context


def test_show_json_has_nudged_only_for_nudged_stores(tiny_pair, nudged, tmp_path: Path) -> None:
    _, path = nudged
    s = Store(path, mode="r")
    record = json.loads(invoke("show", str(path), "--example", s.ids[0], "--json").output)
    want = s.read("positions/nudged", s.rows(0)).astype(bool).tolist()
    assert [p["nudged"] for p in record["positions"]] == want
    _, generated = tmp_path / "g.json", tmp_path / "g.zarr"
    invoke(
        *cli_args(
            "generate",
            *tiny_pair,
            out=tmp_path / "g.json",
            store=generated,
            limit=2,
            max_new_tokens=4,
        )
    )
    other = Store(generated, mode="r")
    record = json.loads(invoke("show", str(generated), "--example", other.ids[0], "--json").output)
    assert all("nudged" not in p for p in record["positions"]) and not other.nudged


def test_resume_after_a_kill_equals_an_uninterrupted_run(
    tiny_pair, nudged, tmp_path, monkeypatch
) -> None:
    import tdsdist.jobs.nudge_units as job

    save, calls = job.save_unit, []

    def dies_after_one_unit(results, tokenizer, unit, n, parts):
        if calls:
            raise RuntimeError("killed")  # while decoding the second unit
        calls.append(n)
        save(results, tokenizer, unit, n, parts)

    monkeypatch.setattr(job, "save_unit", dies_after_one_unit)
    with pytest.raises(AssertionError):
        nudge(tiny_pair, tmp_path, "n", "--nudge-threshold", "0.4", "--compare")
    out = tmp_path / "n.json"
    assert not out.exists() and len(list(Path(str(out) + ".parts").glob("unit-*.json"))) == 1
    decoded = []
    monkeypatch.setattr(
        job, "save_unit", lambda r, t, u, n, p: (decoded.append(n), save(r, t, u, n, p))
    )
    nudge(tiny_pair, tmp_path, "n", "--nudge-threshold", "0.4", "--compare")
    assert sorted(decoded) == [1, 2]  # only the pending units
    assert json.loads(out.read_text()) == json.loads(nudged[0].read_text())
    a, b = Store(tmp_path / "n.zarr", mode="r"), Store(nudged[1], mode="r")
    for name in a.array_names():
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--nudge-threshold", "1.5"), "nudge_threshold must be in [0, 1]"),
        (("--nudge-rule", "never"), "is not one of"),
    ],
)
def test_bad_options_are_one_line(tiny_pair, tmp_path: Path, flags, message) -> None:
    result = CliRunner().invoke(
        main,
        cli_args(
            "nudge",
            *tiny_pair,
            out=tmp_path / "o.json",
            store=tmp_path / "o.zarr",
            device=None,
            extra=flags,
        ),
    )
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o.json").exists()


def test_analyze_and_figures_against_show_json(tiny_pair, nudged, tmp_path: Path) -> None:
    _, path = nudged
    s = Store(path, mode="r")
    shown = [json.loads(invoke("show", str(path), "--example", i, "--json").output) for i in s.ids]
    summary = json.loads(invoke("analyze", str(path), "--json", "--min-support", "1").output)
    n = summary["nudge"]
    flags = [[p["nudged"] for p in r["positions"]] for r in shown]
    total = sum(map(len, flags))
    assert n["nudged_positions"] == sum(map(sum, flags)) and n["positions"] == total
    assert n["fraction"]["mean"] == pytest.approx(sum(map(sum, flags)) / total)
    lo, hi = n["fraction"]["ci"]
    assert lo <= n["fraction"]["mean"] <= hi
    assert summary["measures"]["nudged"]["mean"] == pytest.approx(n["fraction"]["mean"])
    for row in summary["by_position"][:NEW]:  # the fraction at each position t
        at_t = [f[row["t"]] for f in flags if len(f) > row["t"]]
        assert row["mean_nudged"]["mean"] == pytest.approx(np.mean(at_t))
    counts: dict[int, list[int]] = {}
    for r in shown:
        for p in r["positions"]:
            c = counts.setdefault(p["token_id"], [0, 0])
            c[0] += p["nudged"]
            c[1] += 1
    top = n["top_nudged_tokens"]
    assert [(t["count"], t["seen"]) for t in top] == [tuple(counts[t["token_id"]]) for t in top]
    assert [t["count"] for t in top] == sorted(
        (c[0] for c in counts.values() if c[0]), reverse=True
    )[: len(top)]
    means = [np.mean([p["aligned"]["logprob"] for p in r["positions"]]) for r in shown]
    assert n["compare"]["nudged"]["mean"] == pytest.approx(np.mean(means), rel=1e-5)
    diff = n["compare"]["difference"]
    assert diff["mean"] == pytest.approx(
        n["compare"]["nudged"]["mean"] - n["compare"]["base_only"]["mean"], rel=1e-5
    )
    api = tdsdist.open_store(path)
    assert [api.example(i)["nudged"].tolist() for i in s.ids] == flags  # the API too
    table = pq.read_table(invoke_export(path, tmp_path / "n.parquet"))
    assert table.column("nudged").to_pylist() == [f for r in flags for f in r]  # export, in order
    assert "none damaged" in invoke("verify", str(path)).output  # positions/nudged too
    text = invoke("analyze", str(path)).output
    assert "nudged fraction" in text and "aligned log-prob per token" in text
    folder = tmp_path / "figs"
    invoke("figures", str(path), "--out", str(folder))
    assert (folder / "nudged_by_position.png").exists() and (
        folder / "top_nudged_tokens.png"
    ).exists()
    # a store that was not nudged: no nudge section, no nudged curve or figure
    plain = tmp_path / "plain.zarr"
    invoke(*cli_args("score", *tiny_pair, store=plain, limit=2, max_output_tokens=6, top_k=K))
    other = json.loads(invoke("analyze", str(plain), "--json").output)
    assert "nudge" not in other and "mean_nudged" not in other["by_position"][0]
    invoke("figures", str(plain), "--out", str(tmp_path / "plain-figs"))
    assert not (tmp_path / "plain-figs" / "nudged_by_position.png").exists()


@pytest.mark.parametrize(
    "path",
    sorted(Path(__file__).parent.parent.joinpath("configs", "nudge").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_nudge_config_files_build(path: Path) -> None:
    config = build_config(load_yaml(path, NudgeConfig), {}, NudgeConfig)
    assert isinstance(config, NudgeConfig) and config.compare
    assert not config.aligned.startswith("~")


def test_a_run_killed_after_publishing_the_store_finishes(
    tiny_pair, nudged, tmp_path, monkeypatch
) -> None:
    """Killed between the store's rename and the parts' removal: the same command assembles
    again from the parts (no decoding) and replaces the store it had published."""
    import tdsdist.jobs.nudge_units as job

    rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        if str(path).endswith(".parts"):
            raise RuntimeError("killed")
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(AssertionError):
        nudge(tiny_pair, tmp_path, "n", "--nudge-threshold", "0.4", "--compare")
    assert (tmp_path / "n.zarr").exists() and (tmp_path / "n.json.parts").exists()
    monkeypatch.undo()
    monkeypatch.setattr(job, "decode_unit", lambda *a: pytest.fail("decoded again"))
    nudge(tiny_pair, tmp_path, "n", "--nudge-threshold", "0.4", "--compare")
    assert not (tmp_path / "n.json.parts").exists()
    a, b = Store(tmp_path / "n.zarr", mode="r"), Store(nudged[1], mode="r")
    for name in a.array_names():
        np.testing.assert_array_equal(a.read(name), b.read(name), err_msg=name)


def test_the_policy_against_float64_on_fresh_logits() -> None:
    """`Nudging` row by row: the base top-1 probability against a float64 softmax, the choice
    against each model's own argmax, the `shifted` rule against the base top 3 (no ties)."""
    from tdsdist.engine.head import VocabShard
    from tdsdist.engine.lockstep import LockstepRequest
    from tdsdist.engine.nudging import Nudging, base_top1_probability

    gen = torch.Generator().manual_seed(7)
    logits = {
        m: torch.randn(6, 301, generator=gen) * s for m, s in (("aligned", 3.0), ("base", 2.0))
    }
    logits["base"][:3] *= 4  # some confident rows, some not
    want = torch.softmax(logits["base"].double(), -1).amax(-1)
    shard = VocabShard()
    np.testing.assert_allclose(base_top1_probability(logits["base"], shard), want, rtol=1e-5)
    requests = [LockstepRequest(str(i), {"aligned": [1], "base": [1]}, 4) for i in range(6)]
    for policy, expected in (
        (Nudging("threshold", 0.5), want < 0.5),
        (Nudging("threshold", 1.0), torch.ones(6, dtype=torch.bool)),
        (Nudging("threshold", 0.0), torch.zeros(6, dtype=torch.bool)),
        (
            Nudging("shifted"),
            ~(logits["base"].topk(3).indices == logits["aligned"].argmax(-1, keepdim=True)).any(-1),
        ),
    ):
        tokens = policy.choose(lambda m: logits[m], requests, shard)
        assert policy.last_nudged.tolist() == expected.tolist()
        chosen = torch.where(expected, logits["aligned"].argmax(-1), logits["base"].argmax(-1))
        assert tokens.tolist() == chosen.tolist()
    assert 0 < (want < 0.5).sum() < 6
