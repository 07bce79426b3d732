"""`--head-dtype`: the projection of the answer rows in float32 from a half-precision body, and
the rule that keeps existing stores resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args
from transformers import AutoModelForCausalLM

from tdsdist.cli import main
from tdsdist.engine.runner import ModelRunner
from tdsdist.store import Store


def test_the_float32_head_projects_the_hidden_states_in_float32(tiny_pair) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_pair[0], dtype=torch.bfloat16).eval()
    hidden = torch.randn(5, model.config.hidden_size).to(torch.bfloat16)
    weight = model.get_output_embeddings().weight[:301]
    exact = ModelRunner(model, 301, torch.device("cpu"), head_dtype="float32")
    as_model = ModelRunner(model, 301, torch.device("cpu"), head_dtype="model")
    assert exact.weight.dtype == torch.float32 and as_model.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        exact.logits(hidden), F.linear(hidden.float(), weight.float()), rtol=0, atol=0
    )
    torch.testing.assert_close(as_model.logits(hidden), F.linear(hidden, weight).float())
    # bfloat16 logits have 8 bits of mantissa: they tie far more often than float32 ones.
    ties = [
        (r.logits(hidden)[:, None, :] == r.logits(hidden)[:, :, None]).sum()
        for r in (exact, as_model)
    ]
    assert ties[1] > ties[0]


def args(pair, store: Path, *extra: str) -> list[str]:
    return cli_args(
        "score",
        *pair,
        store=store,
        top_k=5,
        limit=4,
        unit_size=2,
        max_output_tokens=12,
        extra=extra,
    )


def test_new_stores_record_the_float32_head_and_old_ones_keep_theirs(tiny_pair, tmp_path) -> None:
    runner = CliRunner()
    new = tmp_path / "new.zarr"
    result = runner.invoke(main, args(tiny_pair, new, "--dtype", "bfloat16"))
    if "pack_vnni2" in repr(result.exception):  # torch, not tdsdist: see the reason
        pytest.skip(
            "torch's bfloat16 kernels pick AVX-512 VNNI packing on this AMX CPU although"
            " ATEN_CPU_CAPABILITY forces a lower capability, then refuse it (pack_vnni2)"
        )
    assert result.exit_code == 0, result.output
    assert Store(new, mode="r").meta["fingerprint"]["head_dtype"] == "float32"
    # A store made with the model-dtype head (as every 0.1.0 store was) has no key, and resumes
    # without the flag; asking for the other head is refused, naming it.
    old = tmp_path / "old.zarr"
    first = runner.invoke(
        main, args(tiny_pair, old, "--dtype", "bfloat16", "--head-dtype", "model", "--limit", "2")
    )
    assert first.exit_code == 0
    assert "head_dtype" not in Store(old, mode="r").meta["fingerprint"]
    refused = runner.invoke(
        main, args(tiny_pair, old, "--dtype", "bfloat16", "--head-dtype", "float32", "--limit", "2")
    )
    assert refused.exit_code == 2 and "head_dtype" in refused.output
    resumed = runner.invoke(main, args(tiny_pair, old, "--dtype", "bfloat16", "--limit", "2"))
    assert resumed.exit_code == 0, resumed.output
    # A float32 model: the head's precision changes nothing, so no key either way.
    plain = tmp_path / "f32.zarr"
    assert runner.invoke(main, args(tiny_pair, plain)).exit_code == 0
    assert "head_dtype" not in Store(plain, mode="r").meta["fingerprint"]
    # The two heads differ in the last bits only where bfloat16 rounding bites.
    a, b = Store(new, mode="r"), Store(old, mode="r")
    rows = b.valid_rows()  # the first unit, in both
    diff = np.abs(a.read("base/logprob")[: len(rows)][rows] - b.read("base/logprob")[rows])
    assert diff.max() > 0 and diff.max() < 0.1
