"""Config files under configs/ and the flag-over-file rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdsdist.config import ScoreConfig, build_config, field_names, load_yaml
from tdsdist.errors import TdsError

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


def test_there_are_configs_for_the_published_pairs() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"llama2-7b", "llama2-7b-vicuna", "mistral-7b", "llama2-70b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_builds(path: Path) -> None:
    config = build_config(load_yaml(path), {})
    assert isinstance(config, ScoreConfig)
    assert not config.aligned.startswith("~")


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("aligned: a\nbase: b\ndata: d.json\nstore: s\ntop-k: 7\ndtype: bfloat16\n")
    config = build_config(load_yaml(f), {"top_k": 3, "dtype": None})
    assert config.top_k == 3 and config.dtype == "bfloat16"


def test_every_field_is_a_cli_flag() -> None:
    from tdsdist.cli import score_command

    flags = {p.name for p in score_command.params}
    assert set(field_names()) <= flags


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"unit_size": -1}, "unit_size"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"aligned_template": "x"}, "aligned_template"),
    ],
)
def test_invalid_values_name_the_field(values: dict, message: str) -> None:
    base = {"aligned": "a", "base": "b", "data": "d", "store": "s"}
    with pytest.raises(TdsError, match=message):
        build_config({}, {**base, **values})


def test_missing_required_options_are_named() -> None:
    with pytest.raises(TdsError, match="--aligned, --store"):
        build_config({"base": "b", "data": "d"}, {})
