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

from badfiles import png_with_size
from clip_rt.cli import main
from clip_rt.errors import ClipRtError
from clip_rt.outputs import charts
from clip_rt.outputs.records import Record
from clip_rt.outputs.report import ASPECT_TOLERANCE, aspect_type, orientation, summarise, write_report
from test_cli_classify import install_fake

CHARTS = [
    "class_distribution.png",
    "class_mean_score.png",
    "aspect_types.png",
    "aspect_ratio_hist.png",
    "image_size_hist.png",
    "contact_sheet.png",
]


@pytest.mark.parametrize(
    "w,h,kind",
    [
        (100, 100, "1:1"),
        (640, 480, "4:3"),
        (480, 640, "4:3"),
        (1920, 1080, "16:9"),
        (1080, 1920, "16:9"),
        (600, 400, "3:2"),
        (1000, 1015, "1:1"),
        (1000, 1030, "other"),
        (500, 371, "4:3"),
        (1000, 200, "other"),
    ],
)
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
    px = s["pixels"]
    assert px["images"] == 3
    assert px["width"] == {"min": 100, "mean": pytest.approx(1220 / 3), "median": 480, "max": 640}
    assert px["height"] == {"min": 100, "mean": pytest.approx(1220 / 3), "median": 480, "max": 640}


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
    r = CliRunner().invoke(
        main,
        [
            "classify",
            str(tmp_path / "imgs"),
            "-l",
            "red,绿色 green,青い blue",
            "--report",
            str(rep),
            "-o",
            str(tmp_path / "r.jsonl"),
        ],
        catch_exceptions=False,
    )
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
    s = write_report(recs, str(tmp_path / "r"), ["a"], contact_sheet=0)
    assert "contact_sheet.png" not in s["charts"] and not (tmp_path / "r" / "contact_sheet.png").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hide_module: Any) -> None:
    hide_module("matplotlib")
    with pytest.raises(ClipRtError, match=r"pip install 'clip-rt\[report\]'"):
        write_report([Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)], str(tmp_path / "r"), ["a"])
    install_fake(monkeypatch)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = CliRunner().invoke(main, ["classify", str(tmp_path / "x.png"), "-l", "a,b", "--report", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "clip-rt[report]" in r.output and not (tmp_path / "r2").exists()


def test_many_classes_chart_stays_readable(tmp_path: Path) -> None:
    labels = [f"class {i}" for i in range(300)]
    recs = [Record(f"{i}.png", labels[i % 7], 0.5, {}, 10, 10) for i in range(50)]
    s = write_report(recs, str(tmp_path / "r"), labels, contact_sheet=0)
    assert len(s["classes"]) == 300
    with Image.open(tmp_path / "r" / "class_distribution.png") as im:
        assert im.height < 3000  # 40 bars, not 300


# -- one aspect-ratio definition ------------------------------------------------------------
@pytest.mark.parametrize(
    "w,h,kind",
    [
        (1000, 1015, "square"),
        (1015, 1000, "square"),
        (100, 100, "square"),
        (1000, 1030, "portrait"),
        (640, 480, "landscape"),
        (480, 640, "portrait"),
    ],
)
def test_square_is_the_1_1_type(w: int, h: int, kind: str) -> None:
    assert orientation(w, h) == kind
    assert (aspect_type(w, h) == "1:1") == (kind == "square")


def test_square_count_equals_1_1_count() -> None:
    sizes = [(1000, 1015), (1015, 1000), (999, 1000), (500, 500), (640, 480), (1000, 1030)]
    s = summarise([Record(f"{i}.png", "a", 1.0, {"a": 1.0}, w, h) for i, (w, h) in enumerate(sizes)], ["a"])
    ar = s["aspect_ratio"]
    assert ar["square"] == ar["types"]["1:1"] == 4
    assert ar["square"] + ar["portrait"] + ar["landscape"] == len(sizes)


# -- the contact sheet uses clip-rt's loader -------------------------------------------------
def _run_with_timeout(fn: Any, fifos: list[Path], timeout: float = 60) -> Any:
    """fn() in a thread; if it hangs (a FIFO opened for reading), open the FIFOs for writing
    so that it can end, then fail."""
    import os
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(10)
        pytest.fail("hung on a FIFO")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_contact_sheet_survives_fifo_and_header_bomb(tmp_path: Path) -> None:
    import os

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(good)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_size(100000, 100000))
    recs = [
        Record(str(good), "a", 0.9, {"a": 0.9, "b": 0.1}, 40, 30),
        Record(str(fifo), "a", 0.8, {"a": 0.8, "b": 0.2}, 40, 30),  # was an image when classified
        Record(str(bomb), "b", 0.7, {"a": 0.3, "b": 0.7}, 40, 30),
        Record(str(tmp_path / "failed.jpg"), error="not an image"),
    ]
    s = _run_with_timeout(lambda: write_report(recs, str(tmp_path / "rep"), ["a", "b"]), [fifo])
    assert "contact_sheet.png" in s["charts"]


def test_report_with_fifo_and_bomb_through_the_cli(real_bundle: Path, tmp_path: Path) -> None:
    import os

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (200, 30 * i, 30)).save(imgs / f"{i}.png")
    os.mkfifo(imgs / "pipe.jpg")
    (imgs / "bomb.png").write_bytes(png_with_size(100000, 100000))
    rep = tmp_path / "rep"
    r = _run_with_timeout(
        lambda: CliRunner().invoke(
            main, ["classify", str(imgs), "-l", "cat,dog", "-m", str(real_bundle), "--report", str(rep)]
        ),
        [imgs / "pipe.jpg"],
    )
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output  # 2 failed inputs
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["failed"] == 2 and "contact_sheet.png" in summary["charts"]


# -- user text is drawn literally ------------------------------------------------------------
def test_dollar_signs_in_labels_and_names_are_literal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(imgs / "$\\nope$.png")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(imgs / "a_$x^$.png")
    r = CliRunner().invoke(
        main, ["classify", str(imgs), "-l", "red $\\nope$,blue $x^{$", "--report", str(tmp_path / "rep")]
    )
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(
        main, ["similarity", str(imgs / "$\\nope$.png"), "$\\nope$", "a $red^ box", "--plot", str(tmp_path / "$p$.png")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "$p$.png").stat().st_size > 1000


# -- width/height histograms, BOM ----------------------------------------------------------
def test_report_has_pixel_histograms_and_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    _images(tmp_path / "imgs")
    rep = tmp_path / "rep"
    CliRunner().invoke(main, ["classify", str(tmp_path / "imgs"), "-l", "red,green,blue", "--report", str(rep)])
    summary = json.loads((rep / "summary.json").read_text())
    assert "image_size_hist.png" in summary["charts"]
    widths = [64, 48, 40, 96, 60, 70] * 2
    assert summary["pixels"]["width"] == {
        "min": 40,
        "mean": pytest.approx(np.mean(widths)),
        "median": pytest.approx(np.median(widths)),
        "max": 96,
    }
    assert summary["pixels"]["height"]["max"] == 64 and summary["pixels"]["images"] == 12


@pytest.mark.parametrize(
    "labels, flag, bom",
    [
        ("red,green", [], False),
        ("赤 red,緑 green", [], True),
        ("red,green", ["--csv-bom"], True),
        ("赤 red,緑 green", ["--no-csv-bom"], False),
    ],
)
def test_report_csv_bom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labels: str, flag: list[str], bom: bool
) -> None:
    install_fake(monkeypatch)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(imgs / "a.png")
    out = tmp_path / "r.csv"
    r = CliRunner().invoke(
        main, ["classify", str(imgs), "-l", labels, "--report", str(tmp_path / "rep"), "-o", str(out), *flag]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "results.csv").read_bytes().startswith(b"\xef\xbb\xbf") == bom
    assert out.read_bytes().startswith(b"\xef\xbb\xbf") == ("--csv-bom" in flag)  # -o: BOM only when asked


# -- the report's folder: checked before inference, kept on failure -------------------------
def test_report_file_that_is_a_folder_fails_before_inference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    _images(tmp_path / "imgs")
    rep = tmp_path / "rep"
    (rep / "summary.json").mkdir(parents=True)
    out = tmp_path / "r.jsonl"
    r = CliRunner().invoke(
        main, ["classify", str(tmp_path / "imgs"), "-l", "red,green", "--report", str(rep), "-o", str(out)]
    )
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "summary.json" in lines[0], r.stderr
    assert not out.exists()  # refused before any inference


def test_report_on_a_full_disk_keeps_the_previous_report(tmp_path: Path) -> None:
    import os
    import subprocess

    _images(tmp_path / "imgs")
    rep = tmp_path / "rep"
    tests = Path(__file__).resolve().parent
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "limit = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
        f"sys.path.insert(0, {str(tests)!r}); import test_cli_classify as t; t.run_cli_with_fake(0)"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    args = ["classify", str(tmp_path / "imgs"), "-l", "red,green,blue", "--report", str(rep)]
    first = subprocess.run([sys.executable, "-c", code, str(1 << 30), *args], capture_output=True, env=env, timeout=120)
    assert first.returncode == 1, first.stderr  # the broken file
    before = _tree(rep)
    assert "thumbnails/0.jpg" in before and "report.html" in before
    p = subprocess.run(
        [sys.executable, "-c", code, "20000", *args[:-3], "-l", "red,cyan,blue", "--report", str(rep)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    err = p.stderr.decode()
    assert p.returncode == 1 and "Error: cannot write the report" in err and "File too large" in err, err
    assert "Traceback" not in err
    assert _tree(rep) == before  # the page, the thumbnails folder and every file as they were


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under *folder* (hidden ones too: a leftover temporary file would show), by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- charts: what the figures hold ------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib figure the chart functions save, in order."""
    saved: list[Any] = []
    real = charts._save

    def keep(fig: Any, path: Any) -> Any:
        saved.append(fig)
        return real(fig, path)

    monkeypatch.setattr(charts, "_save", keep)
    return saved


def _drawn(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_chart_axes(tmp_path: Path, figures: list[Any]) -> None:
    recs = [Record(f"{i}.png", "big", 0.97, {}, 10, 10) for i in range(5)]
    recs += [Record("t.png", "tiny", 0.0004, {}, 10, 10), Record("u.png", "small", 0.02, {}, 10, 10)]
    write_report(recs, str(tmp_path / "r"), ["big", "tiny", "small", "none"], contact_sheet=0)
    dist, mean, pie, ratio, sizes = figures
    ax = dist.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())  # counts: 0, 1, 2 ... not 0.5
    ax = mean.axes[0]
    assert ax.get_xlim()[1] <= 1.0  # a percentage axis ends at 100 %
    widths = {label.get_text(): bar.get_width() for label, bar in zip(ax.get_yticklabels(), ax.patches)}
    assert widths["tiny"] >= charts.MIN_BAR * ax.get_xlim()[1] > 0  # visible, not a hairline
    assert widths["big"] == pytest.approx(0.97) and widths["none"] == 0
    assert "0.04%" in [t.get_text() for t in ax.texts] and "no images" in [t.get_text() for t in ax.texts]
    for fig in (ratio, sizes):
        for ax in fig.axes:
            assert all(float(t).is_integer() for t in ax.get_yticks())


def test_pie_labels_do_not_collide_with_the_title(tmp_path: Path, figures: list[Any]) -> None:
    # 13 square, 3 3:2, 2 16:9, 1 other: labels around the pie used to run into the title
    sizes = [(100, 100)] * 13 + [(600, 400)] * 3 + [(192, 108)] * 2 + [(1000, 200)]
    recs = [Record(f"{i}.png", "a", 0.9, {}, w, h) for i, (w, h) in enumerate(sizes)]
    write_report(recs, str(tmp_path / "r"), ["a"], contact_sheet=0)
    pie = figures[2]
    renderer = _drawn(pie)
    ax = pie.axes[0]
    title = ax.title.get_window_extent(renderer)
    others = [t for t in ax.texts if t.get_text()]
    legend = ax.get_legend()
    others += list(legend.get_texts()) if legend else []
    assert others
    for t in others:
        assert not title.overlaps(t.get_window_extent(renderer)), t.get_text()


def test_many_labels_chart_only_classes_with_images(tmp_path: Path, figures: list[Any]) -> None:
    labels = [f"class {i}" for i in range(300)]
    recs = [Record(f"{i}.png", labels[i % 7], 0.5, {}, 10, 10) for i in range(50)]
    write_report(recs, str(tmp_path / "r"), labels, contact_sheet=0)
    for fig in figures[:2]:
        names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert sorted(names) == sorted(labels[:7]), names
        assert "293 have no images" in fig.axes[0].get_title()


def test_similarity_plot_percent_axis(tmp_path: Path, figures: list[Any]) -> None:
    import clip_rt

    img = tmp_path / "x.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(img)
    out = clip_rt.plot_similarity(str(img), ["a", "b $x$"], [0.99, 0.01], tmp_path / "p.png")
    assert out == tmp_path / "p.png" and out.stat().st_size > 1000
    ax = figures[0].axes[1]
    assert ax.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b $x$"]
    with pytest.raises(clip_rt.InputError, match="2 texts but 1 probabilities"):
        clip_rt.plot_similarity(str(img), ["a", "b"], [1.0], tmp_path / "q.png")


# -- the public API -----------------------------------------------------------------------
def test_write_report_api_takes_classify_results(tmp_path: Path) -> None:
    import subprocess

    import clip_rt
    from clip_rt.zeroshot import Classification

    paths = []
    for i, size in enumerate([(64, 48), (30, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, (9, 9, 9)).save(paths[-1])
    results = [
        Classification("cat", 0.8, {"cat": 0.8, "dog": 0.2}),
        Classification("dog", 0.6, {"cat": 0.4, "dog": 0.6}),
    ]
    s = clip_rt.write_report(results, tmp_path / "rep", paths=paths, contact_sheet=2)
    assert {k: v["count"] for k, v in s["classes"].items()} == {"cat": 1, "dog": 1}
    assert s["pixels"]["width"]["max"] == 64 and s["aspect_ratio"]["types"]["4:3"] == 1
    rows = list(csv.reader((tmp_path / "rep" / "results.csv").open(encoding="utf-8")))
    assert rows[1][0] == str(paths[0]) and rows[0][-2:] == ["score_cat", "score_dog"]
    jsonl = [
        {
            "path": str(paths[0]),
            "label": "cat",
            "score": 1.0,
            "scores": {"cat": 1.0},
            "width": 64,
            "height": 48,
            "error": None,
        }
    ]
    assert clip_rt.write_report(jsonl, tmp_path / "rep2")["classified"] == 1
    with pytest.raises(clip_rt.InputError, match="2 results but 1 paths"):
        clip_rt.write_report(results, tmp_path / "rep3", paths=paths[:1])
    # Lazy: importing clip_rt imports neither matplotlib nor the report module.
    code = "import sys, clip_rt; print('matplotlib' in sys.modules, 'clip_rt.outputs.report' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]


# -- CJK fonts installed after matplotlib built its font cache ----------------------------------
def test_cjk_font_installed_after_the_font_cache(tmp_path: Path) -> None:
    """matplotlib's font cache is built once; a CJK font installed later is not in it. The
    report must still find the font (and say which one it used)."""
    import os
    import shutil
    import subprocess

    fc = shutil.which("fc-list")
    found = subprocess.run([fc, ":lang=zh", "file"], capture_output=True, text=True).stdout.strip() if fc else ""
    if not found:
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-noto-cjk; .ci/run installs it)")
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    # 1. A font cache that predates every system font: only matplotlib's own fonts in it.
    stale = (
        "import glob, json, matplotlib, matplotlib.font_manager as fm; "
        "path = glob.glob(matplotlib.get_cachedir() + '/fontlist-*.json')[0]; "
        "d = json.load(open(path)); d['ttflist'] = [e for e in d['ttflist'] if 'mpl-data' in e['fname']]; "
        "json.dump(d, open(path, 'w'))"
    )
    subprocess.run([sys.executable, "-c", stale], env=env, check=True, timeout=120)
    # 2. A report with CJK labels, in a fresh process reading that cache.
    script = tmp_path / "rep.py"
    script.write_text(
        "import json, sys, warnings\n"
        "from matplotlib import font_manager as fm\n"
        "stale = not any('CJK' in e.name or 'Hei' in e.name for e in fm.fontManager.ttflist)\n"
        "from PIL import Image\n"
        "import clip_rt\n"
        "from clip_rt.outputs.records import Record\n"
        f"img = {str(tmp_path / 'x.png')!r}\n"
        "Image.new('RGB', (20, 20)).save(img)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    s = clip_rt.write_report([Record(img, '猫', 0.9, {'猫': 0.9, '狗': 0.1}, 20, 20)],\n"
        f"                             {str(tmp_path / 'rep')!r}, ['猫', '狗'])\n"
        "print(json.dumps({'stale': stale, 'fonts': s['fonts'], 'warnings': [str(w.message) for w in caught]}))\n"
    )
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["stale"], "the test needs a font cache without the CJK font"
    assert len(got["fonts"]["families"]) == 2 and got["fonts"]["missing_characters"] == "", got
    assert not got["warnings"], got["warnings"]  # matplotlib warns "Glyph ... missing" for every box


def test_cli_names_the_chart_fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(imgs / "a.png")
    r = CliRunner().invoke(main, ["classify", str(imgs), "-l", "red,blue", "--report", str(tmp_path / "rep")])
    assert "(chart fonts: DejaVu Sans)" in r.stderr, r.stderr


def test_missing_glyphs_are_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_rt.outputs import fonts

    install_fake(monkeypatch)
    monkeypatch.setattr(fonts, "FALLBACK_FAMILIES", ())
    monkeypatch.setattr(fonts, "_rescanned", True)
    monkeypatch.setattr(fonts, "_cover", lambda needed, search_all: ([], needed - set(map(ord, "redblu "))))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(imgs / "a.png")
    r = CliRunner().invoke(main, ["classify", str(imgs), "-l", "red 猫,blue 狗", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "no installed font has" in warned[0] and "fonts-noto-cjk" in warned[0], r.stderr
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert "猫" in summary["fonts"]["missing_characters"] and summary["notes"]
