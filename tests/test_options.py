"""Option sections: a field added to one section becomes a flag, a YAML key, a fingerprint key and
its checks, with no other edit (`tdsdist/options.py`)."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import pytest

from tdsdist import config
from tdsdist.commands.common import config_options
from tdsdist.config import GenerateConfig, ScoreConfig
from tdsdist.errors import TdsError
from tdsdist.inputs.fingerprint import options_fingerprint
from tdsdist.options import Section, build_config, load_yaml, opt, required_fields

PAIR = {"aligned": "a", "base": "b", "data": "d.json", "store": "s"}


@dataclass(kw_only=True)
class Extra(Section):
    """A section as another branch would add it (e.g. special tokens, issue 21)."""

    special_tokens: Literal["parse", "text"] = field(
        default="parse", metadata=opt(fingerprint="unless-default")
    )
    """How special-token text in the data is tokenized."""
    width: int = field(default=3, metadata=opt(fingerprint="as-is", minimum=1))
    """A positive width."""
    vocab_file: str | None = field(default=None, metadata=opt(path=True))
    """A path."""


@dataclass(kw_only=True)
class ExtendedScore(ScoreConfig, Extra):
    """`score` composed with one more section."""


def _command(cls: type) -> click.Command:
    @click.command()
    @config_options(cls)
    def command(config_file: str | None, **flags: object) -> None:
        pass

    return command


def test_a_new_sections_fields_are_flags_with_their_docs_types_and_choices() -> None:
    params = {p.name: p for p in _command(ExtendedScore).params}
    assert list(params["special_tokens"].type.choices) == ["parse", "text"]
    assert params["width"].type is click.INT
    assert params["width"].help == "A positive width. [3]"
    assert "--vocab-file" in params["vocab_file"].opts
    assert set(config.field_names(ScoreConfig)) < set(params)


def test_a_new_field_is_a_yaml_key_checked_with_the_file_name(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("special-tokens: text\nwidth: 5\nvocab_file: ~/v.txt\n")
    built = build_config(load_yaml(f, ExtendedScore), PAIR, ExtendedScore)
    assert (built.special_tokens, built.width) == ("text", 5)
    assert built.vocab_file == str(Path.home() / "v.txt")  # `path=True`: `~` expanded
    f.write_text("width: 0\n")
    with pytest.raises(TdsError, match=r"c.yaml: .*width must be a positive integer, got 0"):
        load_yaml(f, ExtendedScore)
    f.write_text("special_tokens: both\n")
    with pytest.raises(TdsError, match="special_tokens must be one of parse, text"):
        load_yaml(f, ExtendedScore)
    with pytest.raises(TdsError, match="width must be an integer, got '5'"):
        build_config({}, {**PAIR, "width": "5"}, ExtendedScore)


def test_a_new_field_enters_the_fingerprint_as_its_metadata_says() -> None:
    plain = options_fingerprint(ExtendedScore, vars(ExtendedScore(**PAIR)))
    assert plain["width"] == 3
    assert "special_tokens" not in plain  # its default: absent, as stores written before it
    changed = ExtendedScore(**PAIR, special_tokens="text")
    assert options_fingerprint(ExtendedScore, vars(changed))["special_tokens"] == "text"
    assert "vocab_file" not in plain  # not fingerprinted
    base_only = options_fingerprint(ScoreConfig, vars(ScoreConfig(**PAIR)))
    assert set(plain) - set(base_only) == {"width"}


def test_the_score_fingerprint_keys_are_those_of_0_1_0() -> None:
    keys = options_fingerprint(ScoreConfig, vars(ScoreConfig(**PAIR)))
    assert set(keys) == {
        "aligned",
        "aligned_revision",
        "base",
        "base_revision",
        "aligned_template",
        "base_template",
        "top_k",
        "dtype",
        "max_output_tokens",
        "limit",
        "unit_size",
        "truncate_context",
    }


def test_the_nudge_fingerprint_keys_are_those_of_before() -> None:
    from tdsdist.config import NudgeConfig

    cfg = NudgeConfig(aligned="a", base="b", data="d", out="o", store="s")
    keys = options_fingerprint(NudgeConfig, vars(cfg))
    assert set(keys) == {
        "aligned",
        "aligned_revision",
        "base",
        "base_revision",
        "nudge_rule",
        "nudge_threshold",
        "compare",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "top_k",
        "limit",
        "unit_size",
        "dtype",
        "head_dtype",
        "format",
        "aligned_template",
        "base_template",
    }
    assert required_fields(NudgeConfig) == ("aligned", "base", "data", "store", "out")


def test_the_generation_fingerprint_keys_are_those_of_before() -> None:
    cfg = GenerateConfig(aligned="a", data="d", out="o")
    keys = options_fingerprint(GenerateConfig, vars(cfg))
    assert set(keys) == {
        "aligned",
        "aligned_revision",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "top_k",
        "limit",
        "unit_size",
        "dtype",
        "aligned_template",
    }
    keys = options_fingerprint(GenerateConfig, vars(dataclasses.replace(cfg, format="jsonl")))
    assert keys["format"] == "jsonl"


def test_required_fields_are_derived() -> None:
    assert required_fields(ScoreConfig) == ("aligned", "base", "data", "store")
    assert required_fields(GenerateConfig) == ("aligned", "data", "out")
    assert "base" in required_fields(ExtendedScore)


def test_types_come_from_the_real_annotations() -> None:
    with pytest.raises(TdsError, match="aligned_revision must be a string, got 1234567"):
        build_config({}, {**PAIR, "aligned_revision": 1234567}, ScoreConfig)
    with pytest.raises(TdsError, match="overwrite must be true or false"):
        build_config({}, {**PAIR, "overwrite": "no"}, ScoreConfig)
    with pytest.raises(TdsError, match="head_dtype must be one of float32, model"):
        build_config({}, {**PAIR, "head_dtype": "bf16"}, ScoreConfig)
    with pytest.raises(TdsError, match="task_index must be a non-negative integer"):
        build_config({}, {**PAIR, "task_index": -1}, ScoreConfig)
    assert build_config({}, {**PAIR, "head_dtype": None}, ScoreConfig).head_dtype is None


def test_no_two_sections_of_a_composition_declare_the_same_field() -> None:
    """A field lives in one section; only the composition itself may redeclare it (another
    default or choice), never two of its sections by accident."""
    from tdsdist.config import NudgeConfig
    from tdsdist.serve.config import ServeConfig

    for composition in (ScoreConfig, GenerateConfig, NudgeConfig, ServeConfig):
        sections = [
            c for c in composition.__mro__[1:] if c is not Section and issubclass(c, Section)
        ]
        assert len(sections) >= 5
        for a, b in itertools.combinations(sections, 2):
            common = {f.name for f in dataclasses.fields(a)} & {
                f.name for f in dataclasses.fields(b)
            }
            assert not common, (composition.__name__, a.__name__, b.__name__, common)


def test_literals_match_the_readers_choices() -> None:
    from typing import get_args

    from tdsdist.inputs.data import FORMATS
    from tdsdist.inputs.transcripts import TURNS

    assert get_args(config.DataFormat) == FORMATS
    assert get_args(config.Turns) == TURNS


def test_generate_scores_with_its_pair_sections() -> None:
    from tdsdist.jobs.generate import scoring_config

    cfg = GenerateConfig(
        aligned="a",
        base="b",
        data="d",
        out="o.json",
        store="s",
        top_k=7,
        limit=3,
        tp=1,
        format="jsonl",
        overwrite=True,
    )
    scoring = scoring_config(cfg)
    assert (scoring.data, scoring.store, scoring.top_k, scoring.aligned_template) == (
        "o.json",
        "s",
        7,
        "chat",
    )
    # the answers file is read as written, and the store generate made is resumed
    assert (scoring.limit, scoring.format, scoring.overwrite) == (None, "auto", False)
    assert scoring.skip_empty_answers


def test_analysis_flags_come_from_their_sections() -> None:
    from tdsdist.analysis_options import Analysis, Filters, Grouping, Thresholds
    from tdsdist.cli import main

    analyze = main.commands["analyze"]
    params = {p.name: p for p in analyze.params}
    for section in (Filters, Thresholds, Analysis, Grouping):
        for f in dataclasses.fields(section):
            assert params[f.name].default == f.default, f.name
    assert list(params["category_by"].type.choices) == ["answer", "aligned-top1"]
    assert "--no-published" in params["published"].secondary_opts
    export = {p.name for p in main.commands["export"].params}
    assert {"unshifted_max", "marginal_max", "exclude_first", "group_by"} <= export
