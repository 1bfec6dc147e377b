"""`classify --report`: summary figures, aspect-ratio types, charts, missing matplotlib."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import main
from clip_rt.errors import ClipRtError
from clip_rt.outputs.records import Record
from clip_rt.outputs.report import ASPECT_TOLERANCE, aspect_type, summarise, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli_classify import install_fake  # noqa: E402

CHARTS = ["class_distribution.png", "class_mean_score.png", "aspect_types.png", "aspect_ratio_hist.png",
          "contact_sheet.png"]


@pytest.mark.parametrize("w,h,kind", [
    (100, 100, "1:1"), (640, 480, "4:3"), (480, 640, "4:3"), (1920, 1080, "16:9"), (1080, 1920, "16:9"),
    (600, 400, "3:2"), (1000, 1015, "1:1"), (1000, 1030, "other"), (500, 371, "4:3"), (1000, 200, "other"),
])
def test_aspect_types(w: int, h: int, kind: str) -> None:
    assert aspect_type(w, h) == kind


def test_aspect_tolerance_edges() -> None:
    inside = int(1000 * (4 / 3) * (1 + ASPECT_TOLERANCE * 0.95))
    outside = int(1000 * (4 / 3) * (1 + ASPECT_TOLERANCE * 1.05)) + 1
    assert aspect_type(inside, 1000) == "4:3" and aspect_type(outside, 1000) == "other"


def test_summary_figures() -> None:
    recs = [
        Record("a.png", "cat", 0.9, {"cat": 0.9, "dog": 0.1}, 640, 480),
        Record("b.png", "cat", 0.7, {"cat": 0.7, "dog": 0.3}, 480, 640),
        Record("c.png", "dog", 0.6, {"cat": 0.4, "dog": 0.6}, 100, 100),
        Record("d.png", error="cannot read image"),
    ]
    s = summarise(recs, ["cat", "dog", "bird"])
    assert (s["images"], s["classified"], s["failed"]) == (4, 3, 1)
    assert s["classes"]["cat"] == {"count": 2, "mean_score": pytest.approx(0.8)}
    assert s["classes"]["bird"] == {"count": 0, "mean_score": None}
    assert s["failed_files"] == [{"path": "d.png", "error": "cannot read image"}]
    ar = s["aspect_ratio"]
    assert ar["types"] == {"1:1": 1, "4:3": 2, "3:2": 0, "16:9": 0, "other": 0}
    assert ar["width_over_height"]["mean"] == pytest.approx((4 / 3 + 3 / 4 + 1) / 3)
    assert (ar["portrait"], ar["landscape"], ar["square"]) == (1, 1, 1)


def _images(folder: Path) -> None:
    folder.mkdir()
    colours = [(230, 20, 20), (20, 200, 20), (20, 20, 230)]
    sizes = [(64, 48), (48, 64), (40, 40), (96, 54), (60, 40), (70, 20)]
    for i in range(12):
        Image.new("RGB", sizes[i % 6], colours[i % 3]).save(folder / f"{i:02d}.png")
    (folder / "zz_broken.jpg").write_bytes(b"no")


def test_classify_report_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    _images(tmp_path / "imgs")
    rep = tmp_path / "rep"
    r = CliRunner().invoke(main, ["classify", str(tmp_path / "imgs"), "-l", "red,绿色 green,青い blue",
                                  "--report", str(rep), "-o", str(tmp_path / "r.jsonl")], catch_exceptions=False)
    assert r.exit_code == 1  # the broken file
    summary = json.loads((rep / "summary.json").read_text(encoding="utf-8"))
    assert summary["images"] == 13 and summary["failed"] == 1
    assert {k: v["count"] for k, v in summary["classes"].items()} == {"red": 4, "绿色 green": 4, "青い blue": 4}
    assert summary["failed_files"][0]["path"].endswith("zz_broken.jpg")
    assert summary["aspect_ratio"]["types"] == {"1:1": 2, "4:3": 4, "3:2": 2, "16:9": 2, "other": 2}
    assert summary["charts"] == CHARTS
    rows = list(csv.reader((rep / "results.csv").open(encoding="utf-8")))
    assert rows[0][-1] == "score_青い blue" and len(rows) == 14
    for name in CHARTS:
        with Image.open(rep / name) as im:
            assert im.format == "PNG" and im.width >= 300 and im.height >= 150, name
            px = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(px, axis=0)) > 10, f"{name} looks blank"


def test_report_without_contact_sheet(tmp_path: Path) -> None:
    recs = [Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)]
    s = write_report(str(tmp_path / "r"), recs, ["a"], contact_sheet=0)
    assert "contact_sheet.png" not in s["charts"] and not (tmp_path / "r" / "contact_sheet.png").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             hide_module: Any) -> None:
    hide_module("matplotlib")
    with pytest.raises(ClipRtError, match=r"pip install 'clip-rt\[report\]'"):
        write_report(str(tmp_path / "r"), [Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)], ["a"])
    install_fake(monkeypatch)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = CliRunner().invoke(main, ["classify", str(tmp_path / "x.png"), "-l", "a,b", "--report", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "clip-rt[report]" in r.output and not (tmp_path / "r2").exists()


def test_cjk_labels_have_glyphs(tmp_path: Path) -> None:
    from clip_rt.outputs import charts

    charts.require_matplotlib()
    if charts.missing_glyph_fonts():
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-noto-cjk)")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        charts.bar_chart(tmp_path / "c.png", ["猫 cat", "犬 dog", "자동차", "кошка"], [3, 2, 1, 1],
                         title="классы 类别", xlabel="images")
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing, missing


def test_many_classes_chart_stays_readable(tmp_path: Path) -> None:
    labels = [f"class {i}" for i in range(300)]
    recs = [Record(f"{i}.png", labels[i % 7], 0.5, {}, 10, 10) for i in range(50)]
    s = write_report(str(tmp_path / "r"), recs, labels, contact_sheet=0)
    assert len(s["classes"]) == 300
    with Image.open(tmp_path / "r" / "class_distribution.png") as im:
        assert im.height < 3000  # 40 bars, not 300
