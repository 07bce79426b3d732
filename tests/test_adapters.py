"""`--aligned-adapter`: base + LoRA over one copy of the weights equals the merged model scored as
a normal pair (score and generate); bad adapters are one line, exit 2, no store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from peft import LoraConfig, get_peft_model
from tdsdist_testkit import assert_float32_close, float32_tolerance, make_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdsdist.cli import main
from tdsdist.config import ScoreConfig
from tdsdist.engine.adapters import apply_adapter, read_adapter, tokenizer_source
from tdsdist.engine.reference import per_token_reference
from tdsdist.errors import TdsError
from tdsdist.inputs.data import load_examples
from tdsdist.inputs.plan import tokenize_context
from tdsdist.jobs.demo import demo_data_path
from tdsdist.jobs.prepare import prepare
from tdsdist.store import Store, per_position_arrays

ROOT = Path(__file__).resolve().parent.parent
K = 5
#: Every linear layer of the body: the adapter changes each of them (never the output projection).
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 301  # the tiny tokenizer's
INTEGER_ARRAYS = ("top_ids", "rank", "ties", "rank_of_base_top1", "token_id")


def random_lora(model: torch.nn.Module, seed: int, targets=TARGETS, std: float = 0.2):
    """A peft LoRA on `model` whose A and B are both random and non-zero (peft starts B at zero,
    which would make the adapter a no-op and the test unable to fail)."""
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, std, generator=generator)
    return lora.eval()


@pytest.fixture(scope="module")
def adapted(tiny_pair, tmp_path_factory) -> dict[str, Path]:
    """The tiny base model, a random LoRA on it (no tokenizer in its folder: the base's is used),
    and the same adapter merged into a model of its own (`merge_and_unload`)."""
    root = tmp_path_factory.mktemp("adapted")
    base = tiny_pair[1]
    lora = random_lora(AutoModelForCausalLM.from_pretrained(base), seed=7)
    lora.save_pretrained(root / "adapter")
    merged = lora.merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "merged")
    return {"base": base, "adapter": root / "adapter", "merged": root / "merged"}


def score_args(base, store: Path, *extra: str) -> list[str]:
    return [
        "score",
        "--base",
        str(base),
        "--data",
        str(demo_data_path()),
        "--store",
        str(store),
        "--limit",
        "6",
        "--max-output-tokens",
        "48",
        "--unit-size",
        "4",
        "--top-k",
        str(K),
        "--max-tokens-per-batch",
        "400",
        "--device",
        "cpu",
        *extra,
    ]


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_same_stores(got: Store, want: Store, merged: Path, contexts: list[list[int]]) -> None:
    """Same ids and ranks, float quantities to the float32 rounding of a forward. W x + B A x and
    (W + B A) x round differently (about 1e-5 here), so a rank may differ by one where the
    token's logit is that close to another's: each such position is checked against the merged
    model's own float64 reference (`target_gap`), given each example's aligned context."""
    rows = want.valid_rows()
    assert want.committed().all() and got.committed().all() and rows.sum() > 100
    for group, columns in per_position_arrays(want.format_version).items():
        for column in columns:
            name = f"{group}/{column.name}"
            a, b = got.read(name)[rows], want.read(name)[rows]
            if name in NEAR_TIE_RANKS:
                assert_ranks_equal_away_from_ties(got, want, name, merged, contexts)
            elif column.name in INTEGER_ARRAYS:
                np.testing.assert_array_equal(a, b, err_msg=name)
            else:
                assert_float32_close(a, b, err_msg=name)


#: Ranks of the aligned side (whose forward is computed two ways), and the token each ranks.
NEAR_TIE_RANKS = {"aligned/rank": "positions/token_id", "aligned/rank_of_base_top1": "base/top_ids"}


def assert_ranks_equal_away_from_ties(got, want, name, merged, contexts) -> None:
    a, b = got.read(name), want.read(name)
    differ = np.flatnonzero((a != b) & want.valid_rows())
    assert len(differ) <= max(2, a.size // 100), f"{name}: {len(differ)} ranks differ"
    model = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
    token_ids, answers = want.read(NEAR_TIE_RANKS[name]), want.read("positions/token_id")
    for row in differ:
        e = next(e for e in range(len(want.ids)) if want.rows(e).start <= row < want.rows(e).stop)
        j = row - want.rows(e).start
        answer = answers[want.rows(e)].tolist()
        token = int(token_ids[row] if token_ids.ndim == 1 else token_ids[row, 0])
        ref = per_token_reference(model, contexts[e] + answer[:j], [token], K, VOCAB)
        assert abs(int(a[row]) - int(b[row])) == 1 and int(ref["rank"][0]) in (a[row], b[row])
        assert ref["target_gap"][0] < float32_tolerance(ref["logprob"][0]), (name, row)


def plan_contexts(config: ScoreConfig) -> list[list[int]]:
    """Each example's aligned context, as `score` tokenized it."""
    return [item.aligned_context for item in prepare(config).plan.items]


def test_adapter_store_equals_the_merged_model_scored_as_a_pair(adapted, tmp_path: Path) -> None:
    adapter_run = invoke(
        score_args(adapted["base"], tmp_path / "a.zarr", "--aligned-adapter", adapted["adapter"])
    )
    assert adapter_run.exit_code == 0, adapter_run.output
    merged_run = invoke(
        score_args(adapted["base"], tmp_path / "m.zarr", "--aligned", adapted["merged"])
    )
    assert merged_run.exit_code == 0, merged_run.output
    got, want = Store(tmp_path / "a.zarr", mode="r"), Store(tmp_path / "m.zarr", mode="r")
    config = ScoreConfig(
        aligned=str(adapted["merged"]),
        base=str(adapted["base"]),
        data=str(demo_data_path()),
        store="-",
        limit=6,
        max_output_tokens=48,
        unit_size=4,
        top_k=K,
    )
    assert_same_stores(got, want, adapted["merged"], plan_contexts(config))
    # Both sides ran with a cached shared prefix: the base one under the adapter switched off.
    assert all(n > 0 for n in got.meta["shared_prefix_tokens"].values())
    # The adapter matters: the base model alone under the same contexts scores otherwise.
    plain = invoke(score_args(adapted["base"], tmp_path / "b.zarr", "--aligned", adapted["base"]))
    assert plain.exit_code == 0, plain.output
    rows = want.valid_rows()
    unadapted = Store(tmp_path / "b.zarr", mode="r").read("aligned/logprob")[rows]
    assert np.abs(got.read("aligned/logprob")[rows] - unadapted).max() > 0.5
    key = got.meta["fingerprint"]["aligned_adapter"]
    assert key["path"] == str(adapted["adapter"].resolve()) and len(key["sha256"]) == 64
    assert "aligned_adapter" not in want.meta["fingerprint"]  # added only when set


def test_adapter_store_resumes_and_refuses_another_adapter(adapted, tmp_path: Path) -> None:
    store = tmp_path / "a.zarr"
    args = score_args(adapted["base"], store, "--aligned-adapter", adapted["adapter"])
    assert invoke(args).exit_code == 0
    again = invoke(args)
    assert again.exit_code == 0 and "0 to do" in again.output, again.output
    other = tmp_path / "other"
    shutil.copytree(adapted["adapter"], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 16}))
    refused = invoke([*args[:-1], other])
    assert refused.exit_code == 2 and "aligned_adapter" in refused.output, refused.output


def generate_args(store: Path, *extra) -> list:
    return [
        "generate",
        "--base",
        "X",
        "--data",
        demo_data_path(),
        "--out",
        store.with_suffix(".json"),
        "--store",
        store,
        "--limit",
        "4",
        "--unit-size",
        "2",
        "--batch-size",
        "3",
        "--max-new-tokens",
        "32",
        "--top-k",
        K,
        "--device",
        "cpu",
        *extra,
    ]


def test_generate_with_the_adapter_equals_the_merged_model(adapted, tmp_path: Path) -> None:
    """Greedy decoding: the same tokens; then both stores, scored in the same job, agree."""
    base = adapted["base"]
    runs = {
        "a": ["--aligned-adapter", adapted["adapter"]],
        "m": ["--aligned", adapted["merged"]],
    }
    for name, extra in runs.items():
        args = generate_args(tmp_path / f"{name}.zarr", *extra)
        args[2] = base
        result = invoke(args)
        assert result.exit_code == 0, result.output
    answers = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in runs}
    assert [r["output"] for r in answers["a"]] == [r["output"] for r in answers["m"]]
    assert answers["a"][0]["generator"]["aligned_adapter"] == str(adapted["adapter"])
    got, want = Store(tmp_path / "a.zarr", mode="r"), Store(tmp_path / "m.zarr", mode="r")
    assert_same_stores(got, want, adapted["merged"], chat_contexts(want, adapted["merged"]))
    # With an adapter, --base without --store is the adapter's base only: nothing is scored.
    alone = generate_args(tmp_path / "alone.zarr", "--aligned-adapter", adapted["adapter"])
    alone[2] = base
    alone = [a for a in alone if a not in ("--store", tmp_path / "alone.zarr")]
    result = invoke(alone)
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "alone.json").read_text())
    assert [r["output"] for r in again] == [r["output"] for r in answers["a"]]
    assert not (tmp_path / "alone.zarr").exists()


def chat_contexts(store: Store, folder: Path) -> list[list[int]]:
    """Each stored example's context under `generate`'s default chat template."""
    tok = AutoTokenizer.from_pretrained(folder)
    examples = {e.id: e for e in load_examples(demo_data_path())}
    chats = [
        tok.apply_chat_template(
            [{"role": "user", "content": examples[i].instruction}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in store.ids
    ]
    return [tokenize_context(tok, chat, False) for chat in chats]


def refused(args: list, store: Path, *words: str) -> None:
    result = invoke(args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]
    assert not store.exists()


def test_missing_adapter_folder(adapted, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    args = score_args(adapted["base"], store, "--aligned-adapter", tmp_path / "nowhere")
    refused(args, store, "no such folder", "never from a hub")
    refused(score_args(adapted["base"], store, "--aligned-adapter", "someone/lora-adapter"), store)


def test_folder_without_adapter_config(adapted, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    refused(
        score_args(adapted["base"], store, "--aligned-adapter", adapted["merged"]),
        store,
        "adapter_config.json",
    )
    broken = tmp_path / "broken"
    shutil.copytree(adapted["adapter"], broken)
    (broken / "adapter_config.json").write_text("{not json")
    refused(score_args(adapted["base"], store, "--aligned-adapter", broken), store, "cannot read")
    pickled = tmp_path / "pickled"
    shutil.copytree(adapted["adapter"], pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    refused(score_args(adapted["base"], store, "--aligned-adapter", pickled), store, "pickle")


def test_adapter_for_a_differently_shaped_base(adapted, tmp_path: Path) -> None:
    """Hidden size 48 against the tiny base's 32: refused up front from the shapes (one line),
    and, should the checks be skipped, peft's own error becomes a TdsError too."""
    tokenizer = AutoTokenizer.from_pretrained(adapted["base"])
    wide = make_tiny_llama(tokenizer, seed=3, hidden_size=48, intermediate_size=96)
    other = tmp_path / "wide-adapter"
    random_lora(wide, seed=1).save_pretrained(other)
    store = tmp_path / "s.zarr"
    args = score_args(adapted["base"], store, "--aligned-adapter", other)
    refused(args, store, "does not fit", "lora_A.weight is [4, 96], but the base")
    gen = generate_args(store, "--aligned-adapter", other)
    gen[2] = adapted["base"]
    refused(gen, store, "does not fit")
    with pytest.raises(TdsError, match="peft cannot load it"):
        apply_adapter(
            AutoModelForCausalLM.from_pretrained(adapted["base"]), read_adapter(str(other))
        )


def test_adapter_of_the_output_projection_is_refused(adapted, tmp_path: Path) -> None:
    head = tmp_path / "head-adapter"
    lora = random_lora(AutoModelForCausalLM.from_pretrained(adapted["base"]), 2, ["lm_head"])
    lora.save_pretrained(head)
    store = tmp_path / "s.zarr"
    refused(
        score_args(adapted["base"], store, "--aligned-adapter", head), store, "lm_head", "merge"
    )


def test_tensor_parallel_is_refused_up_front(adapted, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    args = score_args(adapted["base"], store, "--aligned-adapter", adapted["adapter"], "--tp", "2")
    refused(args, store, "aligned_adapter does not work with tp > 1")
    gen = generate_args(store, "--aligned-adapter", adapted["adapter"], "--tp", "2")
    gen[2] = adapted["base"]
    refused(gen, store, "tp > 1")


def test_aligned_is_optional_with_an_adapter(adapted, tmp_path: Path) -> None:
    """Without --aligned or --aligned-adapter, score says what is missing; generate needs the
    adapter's --base. The tokenizer: --aligned's, else the adapter folder's, else the base's."""
    store = tmp_path / "s.zarr"
    refused(score_args(adapted["base"], store), store, "--aligned")
    gen = ["generate", "--aligned-adapter", adapted["adapter"], "--data", "d", "--out", "o"]
    refused(gen, store, "aligned_adapter needs base")
    adapter, base = str(adapted["adapter"]), str(adapted["base"])
    assert tokenizer_source(None, adapter, base) == base
    assert tokenizer_source("chat-model", adapter, base) == "chat-model"
    with_tokenizer = tmp_path / "with-tokenizer"
    shutil.copytree(adapted["adapter"], with_tokenizer)
    AutoTokenizer.from_pretrained(base).save_pretrained(with_tokenizer)
    assert tokenizer_source(None, str(with_tokenizer), base) == str(with_tokenizer)


def test_adapter_memory_benchmark_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """`tools.bench.adapter_memory` in fresh processes: one copy holds less than two, and both
    variants compute the same numbers."""
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "tools.bench.adapter_memory",
        "--model",
        "tiny",
        "--repeats",
        "1",
        "--sequences",
        "1",
        "--context",
        "4",
        "--answer",
        "8",
        "--threads",
        "1",
        "--out",
        out,
    ]
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["ratio_held"] < 0.9 and report["js_sum_abs_diff"] < 1e-4


def test_adapter_made_for_another_base_name_is_noted(adapted, tmp_path: Path) -> None:
    """Shapes that fit decide; a recorded base of another name is a note in the log, and a hub
    id naming a folder of the same last name is taken for that folder."""
    renamed = tmp_path / "renamed"
    shutil.copytree(adapted["adapter"], renamed)
    config = json.loads((renamed / "adapter_config.json").read_text())
    for named, noted in (("meta-llama/Other-7b", True), (f"someone/{adapted['base'].name}", False)):
        (renamed / "adapter_config.json").write_text(
            json.dumps({**config, "base_model_name_or_path": named})
        )
        store = tmp_path / f"{noted}.zarr"
        result = invoke(score_args(adapted["base"], store, "--aligned-adapter", renamed))
        assert result.exit_code == 0, result.output
        assert (f"was made for {named!r}" in result.output) == noted, result.output
