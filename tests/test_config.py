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


def test_generate_flags_come_from_its_dataclass_with_help_and_defaults() -> None:
    from tdsdist.cli import generate_command
    from tdsdist.config import GenerateConfig, field_docs

    params = {p.name: p for p in generate_command.params}
    assert set(field_names(GenerateConfig)) <= set(params)
    assert list(params["dtype"].type.choices) == ["float32", "bfloat16", "float16", "float64"]
    assert params["stop"].multiple
    assert params["max_new_tokens"].help == field_docs(GenerateConfig)["max_new_tokens"] + " [512]"
    # 0.1.0's flags, which cluster scripts use, are all still there
    for flag in ("--overwrite", "--trust-remote-code", "--aligned-template", "--top-p", "--seed"):
        assert any(flag in p.opts for p in generate_command.params), flag


def test_generate_takes_a_config_file_and_flags_win(tmp_path: Path) -> None:
    from tdsdist.config import GenerateConfig

    f = tmp_path / "g.yaml"
    f.write_text("aligned: m\ndata: p.json\nout: a.json\nstop: ['###']\ntemperature: 0.7\n")
    config = build_config(load_yaml(f, GenerateConfig), {"temperature": 0.0}, GenerateConfig)
    assert config.stop == ["###"] and config.temperature == 0.0
    with pytest.raises(TdsError, match="stop must be a list of strings"):
        build_config({}, {"aligned": "m", "data": "p", "out": "o", "stop": [1]}, GenerateConfig)
    with pytest.raises(TdsError, match="--out"):
        build_config({}, {"aligned": "m", "data": "p"}, GenerateConfig)
