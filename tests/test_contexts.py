"""What the models saw, kept in the store: the instruction and both contexts' ids per example.

A scored store holds exactly the plan's instruction and context ids; `show` (text and JSON), the
API and the report's example page give them; stores without them (0.1.0's, and format 2 stores
of earlier releases) say "not recorded" and still resume and analyse, unchanged in format; a store
recorded by `generate` gains its base contexts when `score` completes it. The report's filters
mark exactly the positions the summary left out. Also: the "reproducing the paper" configs load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from compat_helpers import SCORE
from tdsdist_testkit import save_tiny_pair
from tdsdist_testkit.cli_args import cli_args

import tdsdist
from tdsdist.analysis.report import read_js_call
from tdsdist.analysis.summary import Filters, summarize
from tdsdist.cli import main
from tdsdist.config import GenerateConfig, ScoreConfig, build_config, load_yaml
from tdsdist.jobs.prepare import prepare
from tdsdist.store import MODELS, Store
from tdsdist.store.contexts import GROUP, NOT_RECORDED, StoredContexts

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "store-0.1.0"
#: Short answers that end in Llama-2's literal EOS text (mapped to the EOS token when scored), and
#: an instruction with markup and line breaks, to be shown as text.
RECORDS = [
    {
        "id": "a",
        "pure_input": "Say <b>hi</b>\n  twice.",
        "output": ["Hello there. Hello again.</s>"],
    },
    {"id": "b", "pure_input": "Name a river.", "output": ["The river Nile flows north.</s>"]},
    {"id": "c", "pure_input": "Count to three.", "output": ["One, two, three.</s>"]},
]


def invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def score_args(pair, data: Path, store: Path) -> list[str]:
    return cli_args(
        None,
        *pair,
        data=data,
        store=store,
        unit_size=2,
        top_k=5,
        aligned_template="chat",
        answer_eos_text="</s>",
        answer_eos="map",
    )


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("contexts")
    data = folder / "data.json"
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    args = score_args(tiny_pair, data, folder / "s.zarr")
    invoke("score", *args)
    return folder / "s.zarr", args


def plan_of(args: list) -> object:
    """The plan `score` made for these `--flag value` arguments (prepared again: deterministic)."""
    args = [str(a) for a in args]
    flags: dict = {args[i][2:].replace("-", "_"): args[i + 1] for i in range(0, len(args), 2)}
    flags.update(top_k=int(flags["top_k"]), unit_size=int(flags["unit_size"]))
    return prepare(build_config({}, flags)).plan


def test_a_scored_store_holds_the_plans_instruction_and_contexts(scored) -> None:
    store_path, args = scored
    store = Store(store_path, mode="r")
    plan = plan_of(args)
    stored = StoredContexts(store)
    assert stored.recorded and store.ids == [it.example.id for it in plan.items]
    for e, item in enumerate(plan.items):
        assert stored.instruction(e) == item.example.instruction == RECORDS[e]["pure_input"]
        np.testing.assert_array_equal(stored.ids(e, "aligned"), item.aligned_context)
        np.testing.assert_array_equal(stored.ids(e, "base"), item.base_context)
        assert stored.ids(e, "aligned").dtype == np.int32
    # Both contexts' lengths agree with the per-example lengths stored since 0.2.
    for model in MODELS:
        lengths = store.read(f"examples/{model}_context_length")
        assert [len(stored.ids(e, model)) for e in range(len(store.ids))] == lengths.tolist()
    # Every array of the group carries the crc32c checksum, as the per-position arrays do.
    for name in ("instruction", "aligned/ids", "aligned/offset", "base/ids", "base/offset"):
        codecs = json.loads((store_path / GROUP / name / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "crc32c", name
    assert store.format_version == 4


def test_a_damaged_context_chunk_is_an_error_naming_the_array(scored, tmp_path: Path) -> None:
    store_path, _ = scored
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store_path, copy)
    chunk = copy / GROUP / "base" / "ids" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["show", str(copy), "--example", "a"])
    assert result.exit_code == 2 and f"{GROUP}/base/ids: damaged data" in result.output
    assert "Traceback" not in result.output
    verified = CliRunner().invoke(main, ["verify", str(copy)])
    assert verified.exit_code == 1, verified.output
    assert f"{GROUP}/base/ids: damaged" in verified.output
    assert f"{GROUP}/aligned/ids" not in verified.output  # only the damaged array is named
    clean = CliRunner().invoke(main, ["verify", str(store_path)])
    assert clean.exit_code == 0 and "damaged" not in clean.output.replace("none damaged", "")


def test_show_prints_the_instruction_and_both_contexts(scored) -> None:
    store_path, args = scored
    store = Store(store_path, mode="r")
    tokenizer = store.tokenizer()
    plan = plan_of(args)
    for e, item in enumerate(plan.items):
        got = json.loads(invoke("show", store_path, "--example", item.example.id, "--json").output)
        assert got["instruction"] == item.example.instruction
        for model, ids in (("aligned", item.aligned_context), ("base", item.base_context)):
            assert got["contexts"][model]["token_ids"] == ids
            text = tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            assert got["contexts"][model]["text"] == text
        # The template is visible: the BOS and the chat markers, as the models read them.
        assert got["contexts"]["base"]["text"].startswith("<s># Query:")
        assert "<|user|>" in got["contexts"]["aligned"]["text"]
        differs = [p["base_top1"]["differs_from_aligned_top1"] for p in got["positions"]]
        base_top, aligned_top = (
            store.read(f"{m}/top_ids", store.rows(e))[:, 0] for m in ("base", "aligned")
        )
        assert differs == (base_top != aligned_top).tolist()
        api_example = tdsdist.open_store(store_path).example(item.example.id)
        assert api_example["base_top1_differs"].tolist() == differs
        text = invoke("show", store_path, "--example", item.example.id).output
        assert (
            "instruction:\n"
            + "".join(f"  {line}\n" for line in item.example.instruction.split("\n"))
            in text
        )
        assert f"aligned context ({len(item.aligned_context)} tokens" in text
        assert f"base context ({len(item.base_context)} tokens" in text
        assert "  <s># Query:" in text
        for model in MODELS:  # every line of each context, indented, spaces kept
            context = got["contexts"][model]["text"]
            assert "\n".join("  " + line for line in context.split("\n")) in text
        rows = [line for line in text.splitlines() if line[:4].strip().isdigit()]
        assert [line.endswith(" *") for line in rows] == differs
    api = tdsdist.open_store(store_path).inputs("b")
    assert api["instruction"] == RECORDS[1]["pure_input"]
    np.testing.assert_array_equal(api["base_context"], plan.items[1].base_context)
    assert api["base_context_text"].startswith("<s># Query:")


@pytest.fixture
def old(tmp_path: Path) -> Path:
    root = tmp_path / "v010"
    shutil.copytree(FIXTURES, root)
    save_tiny_pair(root / "models", vocab_size=301, seed=0)
    return root


def test_stores_without_contexts_say_not_recorded_and_still_resume(old: Path, monkeypatch) -> None:
    monkeypatch.chdir(old)
    got = json.loads(invoke("show", "complete.zarr", "--example", "0", "--json").output)
    assert got["instruction"] is None and got["contexts"] == {"aligned": None, "base": None}
    assert all(p["base_top1"]["aligned_rank"] is None for p in got["positions"])
    text = invoke("show", "complete.zarr", "--example", "0").output
    assert f"instruction: {NOT_RECORDED}" in text and f"base context: {NOT_RECORDED}" in text
    assert tdsdist.open_store("complete.zarr").inputs("0") == {
        "instruction": None,
        "aligned_context": None,
        "aligned_context_text": None,
        "base_context": None,
        "base_context_text": None,
    }
    frame = tdsdist.open_store("complete.zarr").dataframe("0")
    assert frame["base_top1_differs"].tolist() == [
        p["base_top1"]["differs_from_aligned_top1"] for p in got["positions"]
    ]
    # Resuming a 0.1.0 store needs no contexts and adds none: it stays a format-1 store.
    result = invoke("score", *SCORE, "--store", "partial.zarr")
    assert "1 already committed, 2 to do" in result.output
    store = Store("partial.zarr", mode="r")
    assert store.committed().all() and store.format_version == 1
    assert not (old / "partial.zarr" / GROUP).exists()
    assert json.loads(invoke("analyze", "partial.zarr", "--json").output)["positions"] > 0
    invoke("report", "partial.zarr", "-o", "site", "--exclude-first", "1")
    _, page = read_js_call((old / "site" / "data" / "ex-0.js").read_text())
    assert page["instruction"] is None and page["contexts"] == {"aligned": None, "base": None}


def test_a_format_2_store_without_contexts_resumes_unchanged(tiny_pair, scored, tmp_path) -> None:
    """As a store of an earlier 0.2 release: the group removed, one unit pending."""
    store_path, args = scored
    copy = tmp_path / "early.zarr"
    shutil.copytree(store_path, copy)
    shutil.rmtree(copy / GROUP)
    Store(copy).mark_pending(1)
    invoke("score", *score_args(tiny_pair, args[args.index("--data") + 1], copy))
    store = Store(copy, mode="r")
    assert store.committed().all() and not (copy / GROUP).exists()
    got = json.loads(invoke("show", copy, "--example", "c", "--json").output)
    assert got["instruction"] is None and got["contexts"]["base"] is None


def test_generate_records_the_aligned_context_and_score_adds_the_base(tiny_pair, tmp_path) -> None:
    out, store_path = tmp_path / "answers.json", tmp_path / "g.zarr"
    flags = dict(limit=3, unit_size=2, max_new_tokens=6, top_k=5)
    invoke(*cli_args("generate", tiny_pair[0], out=out, store=store_path, **flags))
    store = Store(store_path, mode="r")
    stored = StoredContexts(store)
    answers = {r["id"]: r for r in json.loads(out.read_text())}
    tokenizer = store.tokenizer()
    for e, example_id in enumerate(store.ids):
        assert stored.instruction(e) == answers[example_id]["pure_input"]
        # The aligned context is the prompt the answer was generated from (the file's `input`).
        ids = stored.ids(e, "aligned")
        assert tokenizer.decode(ids) == answers[example_id]["input"]
        assert stored.ids(e, "base") is None
    assert tdsdist.open_store(store_path).inputs(store.ids[0])["base_context_text"] is None
    args = cli_args(
        None,
        *tiny_pair,
        data=out,
        store=store_path,
        aligned_template="chat",
        unit_size=2,
        top_k=5,
    )
    invoke("score", *args)
    plan = plan_of([str(a) for a in args])
    stored = StoredContexts(Store(store_path, mode="r"))
    by_id = {it.example.id: it for it in plan.items}
    for e, example_id in enumerate(store.ids):
        np.testing.assert_array_equal(stored.ids(e, "base"), by_id[example_id].base_context)
    assert not [p for p in (store_path / GROUP).iterdir() if p.name.startswith(".")]


def test_report_filters_mark_exactly_the_excluded_positions(scored, tmp_path: Path) -> None:
    store_path, _ = scored
    store = Store(store_path, mode="r")
    tokenizer = store.tokenizer()
    site = tmp_path / "site"
    invoke("report", store_path, "-o", site, "--exclude-first", "2", "--exclude-special-tokens")
    index = read_js_call((site / "data" / "index.js").read_text())[0]
    want = summarize(store, filters=Filters(2, True))
    assert index["summary"]["positions"] == want["positions"]
    assert (
        index["summary"]["categories"]["shifted"]["count"] == want["categories"]["shifted"]["count"]
    )
    assert index["filters"]["exclude_first"] == 2 and index["filters"]["exclude_special_tokens"]
    special = set(tokenizer.all_special_ids)
    total = 0
    for e in range(len(store.ids)):
        _, page = read_js_call((site / "data" / f"ex-{e}.js").read_text())
        tokens = store.read("positions/token_id", store.rows(e))
        assert tokens[-1] == tokenizer.eos_token_id  # the mapped </s>: a special token, left out
        expected = [t < 2 or int(tok) in special for t, tok in enumerate(tokens)]
        assert page["excluded"] == expected and page["filters"] == index["filters"]
        total += sum(expected)
        kept = ~np.array(expected)
        rank = store.read("base/rank", store.rows(e))[kept]
        assert page["stats"]["shifted"] == pytest.approx(np.mean(rank > 3))
    assert total == want["excluded"]["positions"] > 0
    # Without filters nothing is marked, and the summary counts every position.
    invoke("report", store_path, "-o", site)
    _, page = read_js_call((site / "data" / "ex-0.js").read_text())
    assert page["filters"] is None and not any(page["excluded"])
    result = CliRunner().invoke(
        main, ["report", str(store_path), "-o", str(site), "--exclude-first", "-1"]
    )
    assert result.exit_code == 2 and "exclude_first" in result.output


# ------------------------------------------------------------------------------------------------
# Reproducing the paper: the configs of the three published pairs.
# ------------------------------------------------------------------------------------------------

PAPER = sorted(ROOT.glob("configs/paper-*.yaml"))
GENERATE = sorted(ROOT.glob("configs/generate/*.yaml"))


def test_the_paper_configs_exist_and_score_in_float16() -> None:
    assert {p.stem for p in PAPER} == {
        "paper-llama2-7b-chat",
        "paper-vicuna-7b",
        "paper-mistral-7b-instruct",
    }
    for path in PAPER:
        config = build_config(load_yaml(path), {})
        assert isinstance(config, ScoreConfig) and config.dtype == "float16", path
        # The prompts that begin with the text <s> keep the original's doubled BOS.
        verbatim = path.stem in ("paper-llama2-7b-chat", "paper-mistral-7b-instruct")
        template = "input-verbatim" if verbatim else "input"
        assert config.base_template == "plain" and config.aligned_template == template, path
    assert (ROOT / "docs" / "reproducing.md").exists()
    assert "docs/reproducing.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", GENERATE, ids=lambda p: p.stem)
def test_the_generation_configs_cap_answers_at_1024_tokens(path: Path) -> None:
    config = build_config(load_yaml(path, GenerateConfig), {}, GenerateConfig)
    assert config.max_new_tokens == 1024 and config.temperature == 0.0
    assert config.aligned_template == "input"  # the original prompt, verbatim from the file
    # The answers file it writes is what the matching paper config scores.
    pair = path.stem.removeprefix("paper-")
    score = yaml.safe_load((ROOT / "configs" / f"paper-{pair}.yaml").read_text())
    assert score["data"] == config.out and score["aligned"] == config.aligned


def test_the_prompts_tool_writes_the_original_prompts(tmp_path: Path) -> None:
    """`llama2-chat` gives back the shipped file's `input` of every example exactly; the others
    put the instruction where Re-Align's formats put it."""
    from tools.reproduce.prompts import FORMATS
    from tools.reproduce.prompts import main as prompts_main

    shipped = ROOT.parent / "shared" / "data" / "just_eval_llama2_7b_chat.json"
    if not shipped.exists():
        shipped = ROOT / "tdsdist" / "resources" / "just_eval_llama2_7b_chat_first20.json"
    records = json.loads(shipped.read_text(encoding="utf-8"))
    prompts_main(["--format", "llama2-chat", str(shipped), str(tmp_path / "llama2.json")])
    got = json.loads((tmp_path / "llama2.json").read_text(encoding="utf-8"))
    assert [g["input"] for g in got] == [r["input"] for r in records]
    assert [g["id"] for g in got] == [r["id"] for r in records]
    for fmt in ("vicuna", "mistral-instruct"):
        prompts_main(["--format", fmt, str(shipped), str(tmp_path / f"{fmt}.json")])
        rows = json.loads((tmp_path / f"{fmt}.json").read_text(encoding="utf-8"))
        head, tail = FORMATS[fmt].split("{q}")
        assert all(r["input"] == head + r["pure_input"] + tail for r in rows)
    assert FORMATS["vicuna"].endswith(" \nASSISTANT:") and FORMATS["mistral-instruct"].endswith(
        " [/INST]"
    )
