"""`tdsdist figures`: one PNG and one SVG per kind, of the expected size, every store overlaid.

Figures are checked as files (PNG read back as pixels, SVG parsed as XML), against the index
`figures.json`, and for what they draw where it shows in the SVG (one Okabe-Ito colour per store);
the numbers drawn come from the summary, which `test_analysis.py` and `test_curves.py` check.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import pytest
from click.testing import CliRunner
from tdsdist_testkit.cli_args import cli_args

from tdsdist.analysis.figures import (
    COLUMN_WIDTH_IN,
    DPI,
    KINDS,
    OKABE_ITO,
    shifted_tokens,
    site_svg,
    store_labels,
    visible_token,
    write_figures,
)
from tdsdist.analysis.summary import summarize
from tdsdist.cli import main
from tdsdist.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "store-0.1.0"
FAST = ["--resamples", "50", "--max-t", "30"]


@pytest.fixture(scope="module")
def scored(tiny_pair, tmp_path_factory) -> Path:
    """The tiny pair on the first demo answers (format 2: the pair head's exact KL)."""
    aligned, base = tiny_pair
    store = tmp_path_factory.mktemp("figures_scored") / "s.zarr"
    args = cli_args(
        "score", aligned, base, store=store, unit_size=1, limit=3, max_output_tokens=24, top_k=5
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return store


def figures(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["figures", *args])
    return result.exit_code, result.output


def svg_size_pt(path: Path) -> tuple[float, float]:
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return tuple(float(root.get(k).removesuffix("pt")) for k in ("width", "height"))


def check_folder(out: Path, stores: int, exact: list[int] | None = None) -> dict:
    """Every figure listed in figures.json exists as PNG and SVG of the recorded size; `exact`:
    the stores with exact divergences (all by default), the only ones the divergences draw."""
    index = json.loads((out / "figures.json").read_text())
    assert [f["kind"] for f in index["figures"]] == list(KINDS)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ["figures.json", ".tdsdist-figures"] + [f"{k}.{x}" for k in KINDS for x in ("png", "svg")]
    )
    for f in index["figures"]:
        assert f["files"][:2] == [f"{f['kind']}.png", f"{f['kind']}.svg"]
        pixels = matplotlib.image.imread(out / f"{f['kind']}.png")
        assert pixels.shape == (f["height_px"], f["width_px"], 4)
        assert f["width_px"] == round(COLUMN_WIDTH_IN * DPI)  # one column of a paper
        assert pixels[..., :3].min() < 0.5  # something dark is drawn (axes, text)
        width, height = svg_size_pt(out / f"{f['kind']}.svg")
        assert width == pytest.approx(COLUMN_WIDTH_IN * 72)
        assert height == pytest.approx(f["height_px"] / DPI * 72)
        svg = (out / f"{f['kind']}.svg").read_text().lower()
        drawn = exact if f["kind"] == "divergences_by_position" and exact else range(stores)
        for colour in [OKABE_ITO[i] for i in drawn]:  # each store is drawn, in its own colour
            assert colour.lower() in svg, (f["kind"], colour)
        assert OKABE_ITO[stores].lower() not in svg or stores == len(OKABE_ITO)
    assert len(index["stores"]) == len(index["labels"]) == stores
    return index


def test_one_scored_store(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    code, output = figures(str(scored), "-o", str(out), *FAST)
    assert code == 0, output
    index = check_folder(out, 1)
    assert index["labels"] == ["aligned vs base"]  # the pair, from the store's meta
    assert index["options"]["resamples"] == 50 and index["options"]["exclude_first"] == 0
    assert all(f["footnote"].startswith("No positions filtered.") for f in index["figures"])
    divergence = next(f for f in index["figures"] if f["kind"] == "divergence_by_position")
    assert "exact" in divergence["shows"]  # the pair head's KL(aligned || base), not the bound
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_stores_overlay_in_one_figure_per_kind(scored: Path, tmp_path: Path) -> None:
    """Two 0.1.0 stores (top-k KL only) and a scored one: three colours in each figure."""
    stores = [FIXTURES / "complete.zarr", FIXTURES / "recorded-completed.zarr", scored]
    out = tmp_path / "three"
    code, output = figures(*map(str, stores), "-o", str(out), *FAST, "--pdf")
    assert code == 0, output
    pdfs = sorted(out.glob("*.pdf"))
    assert [p.stem for p in pdfs] == sorted(KINDS) and all(
        p.read_bytes()[:5] == b"%PDF-" for p in pdfs
    )
    for p in pdfs:
        p.unlink()
    index = check_folder(out, 3, exact=[2])  # the 0.1.0 stores have no exact divergences
    assert len(set(index["labels"])) == 3  # the same pair names told apart (templates, folder)
    divergence = next(f for f in index["figures"] if f["kind"] == "divergence_by_position")
    assert "top-k" in divergence["shows"]  # format-1 stores have only the lower bound


def test_filters_are_stated(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut"
    code, output = figures(
        str(scored), "-o", str(out), *FAST, "--exclude-first", "2", "--exclude-special-tokens"
    )
    assert code == 0, output
    index = check_folder(out, 1)
    assert index["options"]["exclude_first"] == 2 and index["options"]["exclude_special_tokens"]
    for f in index["figures"]:
        assert "first 2 positions" in f["footnote"] and "special tokens" in f["footnote"]


def test_nothing_left_to_draw_is_an_error(scored: Path, tmp_path: Path) -> None:
    """Decided: a store without positions (all filtered, or nothing committed) is refused with
    one line naming it; nothing is written (no figure silently lacks a store)."""
    out = tmp_path / "none"
    code, output = figures(str(scored), "-o", str(out), *FAST, "--exclude-first", "1000")
    assert code == 2 and output.startswith(f"error: {scored}: no positions to draw")
    assert len(output.strip().splitlines()) == 1 and not out.exists()
    code, output = figures(str(FIXTURES / "recorded.zarr"), "-o", str(out), *FAST)
    assert (
        code == 2
        and "recorded.zarr: no positions to draw" in output
        and "2 units pending" in output
    )
    assert write_figures([{"positions": 0}], tmp_path) == []


def test_output_folder_rules(scored: Path, tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, output = figures(str(scored), "-o", str(other), *FAST)
    assert code == 2 and "not a tdsdist figures folder" in output
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    out = tmp_path / "figs"
    assert figures(str(scored), "-o", str(out), *FAST)[0] == 0
    (out / "stale.png").write_text("old")
    assert figures(str(scored), "-o", str(out), *FAST)[0] == 0  # an earlier folder: replaced
    assert not (out / "stale.png").exists()
    check_folder(out, 1)


def test_same_summary_same_svg(tmp_path: Path) -> None:
    s = summarize(Store(FIXTURES / "complete.zarr", mode="r"), resamples=20)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_figures([s], tmp_path / name, formats=("svg",))
    drawn = [k for k in KINDS if (tmp_path / "a" / f"{k}.svg").exists()]
    assert drawn == [k for k in KINDS if k != "divergences_by_position"]  # format 1: no exact ones
    for kind in drawn:
        assert (tmp_path / "a" / f"{kind}.svg").read_bytes() == (
            tmp_path / "b" / f"{kind}.svg"
        ).read_bytes()


def test_labels_tokens_and_site_svg() -> None:
    pair = {"aligned": "org/Llama-2-7b-chat-hf", "base": "/models/Llama-2-7b-hf/"}
    a = {"store": "/x/plain.zarr", "config": {**pair, "base_template": "plain"}}
    b = {"store": "/x/urial.zarr", "config": {**pair, "base_template": "urial"}}
    c = {"store": "/y/plain.zarr", "config": {**pair, "base_template": "plain"}}
    assert store_labels([a]) == ["Llama-2-7b-chat-hf vs Llama-2-7b-hf"]
    assert store_labels([a, b]) == [
        "Llama-2-7b-chat-hf vs Llama-2-7b-hf (-/plain)",
        "Llama-2-7b-chat-hf vs Llama-2-7b-hf (-/urial)",
    ]
    assert len(set(store_labels([a, b, c]))) == 3
    assert store_labels([{"store": "/s/run.zarr"}]) == ["run.zarr"]
    lora = {
        "aligned": None,
        "base": "/m/Llama-2-7b-hf",
        "aligned_adapter": {"path": "/a/dpo-lora/", "sha256": "0"},
    }
    assert store_labels([{"config": lora}]) == ["Llama-2-7b-hf + dpo-lora vs Llama-2-7b-hf"]
    rows = [
        {"token": " the", "count": 10, "shifted": 4, "shifted_rate": 0.4},
        {"token": "a", "count": 9, "shifted": 7, "shift_rate": 7 / 9},  # an older key
        {"token_id": 5, "count": 4, "shifted": 1},  # counts only
    ]
    assert shifted_tokens({"top_shifted_tokens": rows}) == [
        (" the", 0.4, 4, 10),
        ("a", 7 / 9, 7, 9),
        ("5", 0.25, 1, 4),
    ]
    assert visible_token(" a\n") == "\u2423a\u21b5" and visible_token("") == "\u2205"
    assert (
        visible_token("\x07" + "x" * 30).startswith("\\x07") and len(visible_token("y" * 30)) == 16
    )
    raw = '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n  "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n<svg xmlns:xlink="http://www.w3.org/1999/xlink" xmlns="http://www.w3.org/2000/svg"><use xlink:href="#a"/></svg>'
    clean = site_svg(raw)
    assert "http://www.w3.org/2000/svg" in clean and "DOCTYPE" not in clean and "xlink" not in clean
    assert (
        ET.fromstring(clean.split("\n", 1)[1]).find("{http://www.w3.org/2000/svg}use").get("href")
        == "#a"
    )
