"""report.html: the page `classify --report` writes beside the CSV and the charts.

The first half reads the written files (data, escaping, CSP, thumbnails, what a failed write
leaves); the second opens the page in headless Chromium (tests/browser_util.py) and checks what
a person sees: every image, the table, sorting, filtering, no script from a file name or a
label, no request beyond the report's own files.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from badfiles import encode, exif_rotated_jpeg, photo  # noqa: E402
from browser_util import artifacts_dir, images_loaded, launch, watch  # noqa: E402
from clip_rt.cli import main
from clip_rt.errors import InputError, OutputError
from clip_rt.outputs import html_report, thumbnails
from clip_rt.outputs.html_page import csp_hash
from clip_rt.outputs.records import Record
from clip_rt.outputs.report import write_report
from test_cli_classify import install_fake  # noqa: E402

HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"
ODD_NAME = "q\"'&amp;{{SCRIPT}} .png"
HOSTILE_LABEL = "</script><script>alert(2)</script>"
LABELS = ["red", "green", "blue", HOSTILE_LABEL]


def page_data(folder: Path) -> dict[str, Any]:
    text = (folder / "report.html").read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert m, "no data blob"
    return json.loads(m.group(1))  # type: ignore[no-any-return]


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else ""
        if tag == "script":
            self.scripts.append("")
        if tag == "style":
            self.styles.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "style":
            self.styles[-1] += data


def parse(folder: Path) -> Tags:
    t = Tags()
    t.feed((folder / "report.html").read_text(encoding="utf-8"))
    return t


def make_photos(folder: Path) -> dict[str, str]:
    """Colour images the fake model classifies by colour, awkward names, a broken file, a photo
    stored sideways with an EXIF orientation, and a palette image. Returns name -> expected class."""
    folder.mkdir()
    colours = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
    want = {}
    for i in range(9):
        name = list(colours)[i % 3]
        Image.new("RGB", (64 + 4 * i, 48), colours[name]).save(folder / f"{i:02d}_{name}.png")
        want[f"{i:02d}_{name}.png"] = name
    Image.new("RGB", (50, 50), colours["red"]).save(folder / HOSTILE_NAME)
    want[HOSTILE_NAME] = "red"
    Image.new("RGB", (50, 30), colours["blue"]).save(folder / ODD_NAME)
    want[ODD_NAME] = "blue"
    sideways = Image.new("RGB", (80, 40), colours["green"])  # stored 80x40, shown 40x80
    (folder / "sideways.jpg").write_bytes(exif_rotated_jpeg(sideways, 6))
    want["sideways.jpg"] = "green"
    Image.new("RGB", (40, 40), colours["blue"]).convert("P").save(folder / "palette.png")
    want["palette.png"] = "blue"
    (folder / "zz_broken.jpg").write_bytes(b"not an image at all")
    return want


def classify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labels: list[str] = LABELS
) -> tuple[Path, dict[str, str]]:
    install_fake(monkeypatch)
    want = make_photos(tmp_path / "photos")
    rep = tmp_path / "rep"
    r = CliRunner().invoke(
        main,
        [
            "classify",
            str(tmp_path / "photos"),
            "-l",
            ",".join(labels),
            "--report",
            str(rep),
            "-o",
            str(tmp_path / "out.jsonl"),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 1, r.output  # the broken file
    return rep, want


# -- the files ---------------------------------------------------------------------------------------
def test_report_page_holds_every_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep, want = classify(tmp_path, monkeypatch)
    summary = json.loads((rep / "summary.json").read_text(encoding="utf-8"))
    assert summary["html"] == "report.html"
    data = page_data(rep)
    names = [p.rsplit("/", 1)[-1] for p in data["path"]]
    assert sorted(names) == sorted(list(want) + ["zz_broken.jpg"])
    assert data["labels"] == LABELS
    for i, name in enumerate(names):
        if name == "zz_broken.jpg":
            assert data["error"][i] and data["thumb"][i] is None and data["label"][i] == -1
            continue
        assert data["labels"][data["label"][i]] == want[name], name
        assert data["thumb"][i] == f"{i}.jpg" and data["error"][i] is None
        with Image.open(rep / "thumbnails" / data["thumb"][i]) as im:
            assert im.format == "JPEG" and max(im.size) <= thumbnails.THUMBNAIL_SIZE
            rgb = np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
        assert int(np.argmax(rgb)) == ["red", "green", "blue"].index(want[name]), name  # its own colours
        # a link to the original, relative to the report folder
        assert (rep / unquote(data["href"][i])).resolve() == (tmp_path / "photos" / name).resolve()
    sideways = names.index("sideways.jpg")
    with Image.open(rep / "thumbnails" / data["thumb"][sideways]) as im:
        assert im.size[1] > im.size[0]  # EXIF orientation applied, as the run decoded it
    listed = {p.name for p in (rep / "thumbnails").iterdir()}
    assert listed == {thumbnails.MARKER} | {f"{i}.jpg" for i, n in enumerate(names) if n != "zz_broken.jpg"}
    # the page's static sections: the counts, the charts beside it
    html = (rep / "report.html").read_text(encoding="utf-8")
    assert '<span class="big" id="count-images">14</span>' in html
    assert 'src="class_distribution.png"' in html and "contact_sheet.png" not in html


def test_hostile_names_and_labels_stay_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep, _ = classify(tmp_path, monkeypatch)
    tags = parse(rep)
    assert [t for t, _ in tags.tags].count("script") == 2  # the data blob and the page's own script
    assert not [t for t, a in tags.tags if any(k.startswith("on") for k in a)], "an event handler attribute"
    assert not [a for t, a in tags.tags if t == "img" and a.get("src") == "x"]
    html = (rep / "report.html").read_text(encoding="utf-8")
    assert HOSTILE_LABEL not in html and HOSTILE_NAME not in html  # only ever escaped
    assert "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html  # the summary's class table
    data = page_data(rep)
    assert HOSTILE_LABEL in data["labels"]
    assert any(p.endswith(HOSTILE_NAME) for p in data["path"]) and any(p.endswith(ODD_NAME) for p in data["path"])
    assert tags.scripts[1] == html_report.asset("clip_rt.outputs", "html/report.js")  # {{SCRIPT}} in a name: text
    # links are percent-encoded byte for byte: no name becomes a scheme
    hrefs = [h for h in data["href"] if h]
    assert all(re.fullmatch(r"[A-Za-z0-9_.~/%-]+", h) for h in hrefs), hrefs


def test_csp_admits_only_the_page_itself(tmp_path: Path) -> None:
    write_report([Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)], str(tmp_path / "r"), ["a"], contact_sheet=0)
    tags = parse(tmp_path / "r")
    meta = [a for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(meta) == 1
    policy = dict((d.split(" ", 1) + [""])[:2] for d in (p.strip() for p in meta[0]["content"].split(";")))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == csp_hash(tags.scripts[1]) and policy["style-src"] == csp_hash(tags.styles[0])
    assert "unsafe" not in meta[0]["content"] and "http" not in policy["img-src"]
    links = [a for t, a in tags.tags if t in ("link", "img", "script") and (a.get("href") or a.get("src"))]
    assert all(not re.match(r"(https?:)?//", a.get("href") or a.get("src") or "") for a in links), links


def test_thumbnails_decode_as_the_run_did(tmp_path: Path) -> None:
    """EXIF orientation, 16-bit images (scaled as the preprocessing does, not clipped to white),
    CMYK, palette: each thumbnail looks like the image."""
    sideways = tmp_path / "sideways.jpg"
    sideways.write_bytes(exif_rotated_jpeg(photo(96, 64), 6))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.full((30, 40), 20000, dtype=np.uint16)).save(sixteen)  # about 31 % grey
    cmyk = tmp_path / "cmyk.jpg"
    cmyk.write_bytes(encode(Image.new("RGB", (40, 30), (200, 30, 30)).convert("CMYK"), "JPEG"))
    big = tmp_path / "big.jpg"
    big.write_bytes(encode(photo(1200, 800), "JPEG"))
    data, w, h = thumbnails.thumbnail_jpeg(str(sideways))
    assert (w, h) == (64, 96)  # turned upright; small images are not enlarged
    data, w, h = thumbnails.thumbnail_jpeg(str(sixteen))
    with Image.open(io.BytesIO(data)) as im:
        grey = float(np.asarray(im.convert("L"), dtype=float).mean())
    assert 70 < grey < 90, grey  # 20000 / 257 = 78, not 255
    data, _, _ = thumbnails.thumbnail_jpeg(str(cmyk))
    with Image.open(io.BytesIO(data)) as im:
        r, g, b = np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)
    assert r > 150 and g < 80 and b < 80
    data, w, h = thumbnails.thumbnail_jpeg(str(big))
    assert (w, h) == (160, 107) and len(data) < 12_000


def test_broken_image_gets_a_placeholder(tmp_path: Path) -> None:
    """A file classified earlier and unreadable now, a record without a file, a FIFO: the page is
    written, each without a thumbnail and with the reason."""
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(good)
    gone = tmp_path / "gone.png"
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encode(photo(), "JPEG")[:200])
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    recs = [Record(str(p), "a", 0.9, {"a": 0.9}, 20, 20) for p in (good, gone, truncated, fifo)]
    write_report(recs, str(tmp_path / "r"), ["a"], contact_sheet=0)
    data = page_data(tmp_path / "r")
    assert data["thumb"] == ["0.jpg", None, None, None]
    assert data["thumbError"][0] is None
    assert "no such file" in data["thumbError"][1]
    assert "truncated" in data["thumbError"][2] or "corrupt" in data["thumbError"][2]
    assert "not a regular file" in data["thumbError"][3]
    assert data["error"] == [None] * 4  # they were classified: the run's result stands


def test_a_users_thumbnails_folder_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    make_photos(tmp_path / "photos")
    rep = tmp_path / "rep"
    (rep / "thumbnails").mkdir(parents=True)
    (rep / "thumbnails" / "mine.jpg").write_bytes(b"my own file")
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(
        main, ["classify", str(tmp_path / "photos"), "-l", "red,green", "--report", str(rep), "-o", str(out)]
    )
    assert r.exit_code == 1
    assert "thumbnails" in r.stderr and "not made by clip-rt" in r.stderr, r.stderr
    assert not out.exists()  # refused before any inference
    assert (rep / "thumbnails" / "mine.jpg").read_bytes() == b"my own file"
    # a file where the folder would go is refused the same way
    (rep / "thumbnails" / "mine.jpg").unlink()
    (rep / "thumbnails").rmdir()
    (rep / "thumbnails").write_text("a file")
    with pytest.raises(OutputError, match="it is a regular file"):
        write_report([Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)], str(rep), ["a"])


def test_without_the_page(tmp_path: Path) -> None:
    """html=False: no page, no thumbnails, and a folder of the user's named thumbnails is no obstacle."""
    rep = tmp_path / "rep"
    (rep / "thumbnails").mkdir(parents=True)
    s = write_report([Record("x.png", "a", 1.0, {"a": 1.0}, 10, 10)], str(rep), ["a"], contact_sheet=0, html=False)
    assert "html" not in s and not (rep / "report.html").exists()
    assert list((rep / "thumbnails").iterdir()) == []


def test_a_new_report_replaces_the_thumbnails(tmp_path: Path) -> None:
    imgs = []
    for i in range(5):
        imgs.append(tmp_path / f"{i}.png")
        Image.new("RGB", (30, 20), (50 * i, 0, 0)).save(imgs[-1])
    rep = tmp_path / "rep"
    write_report([Record(str(p), "a", 0.5, {"a": 0.5}, 30, 20) for p in imgs], str(rep), ["a"], contact_sheet=0)
    assert len(list((rep / "thumbnails").glob("*.jpg"))) == 5
    leftover = rep / f".thumbnails.{2**22 + 7}.deadbeef.tmp"  # a killed run's staging folder (no such pid)
    leftover.mkdir()
    (leftover / thumbnails.MARKER).touch()
    (leftover / "0.jpg").write_bytes(b"x")
    write_report([Record(str(p), "a", 0.5, {"a": 0.5}, 30, 20) for p in imgs[:2]], str(rep), ["a"], contact_sheet=0)
    assert sorted(p.name for p in (rep / "thumbnails").iterdir()) == [thumbnails.MARKER, "0.jpg", "1.jpg"]
    assert [p.name for p in rep.iterdir() if p.name.startswith(".")] == []


def test_a_failed_page_keeps_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (200, 0, 0)).save(img)
    rep = tmp_path / "rep"
    write_report([Record(str(img), "a", 0.5, {"a": 0.5}, 30, 20)], str(rep), ["a"], contact_sheet=0)
    before = {p.relative_to(rep).as_posix(): p.read_bytes() for p in rep.rglob("*") if p.is_file()}

    def full_disk(*args: Any, **kw: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(html_report, "render", full_disk)  # after the thumbnails were written
    with pytest.raises(OutputError, match="No space left on device"):
        write_report([Record(str(img), "b", 0.7, {"b": 0.7}, 30, 20)] * 3, str(rep), ["b"], contact_sheet=0)
    after = {p.relative_to(rep).as_posix(): p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    assert after == before  # no staged folder or file left behind either


def test_matrix_and_truths_for_an_evaluation(tmp_path: Path) -> None:
    """What `eval --report` passes: the true class per image and a confusion matrix."""
    imgs = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        imgs.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), colour).save(imgs[-1])
    recs = [Record(str(imgs[0]), "cat", 0.9), Record(str(imgs[1]), "dog", 0.6), Record(str(imgs[2]), "cat", 0.4)]
    m = html_report.Matrix(
        "Confusion matrix", ["cat", "dog"], ["cat", "dog"], [[1, 0], [1, 1]], note="rows: true class"
    )
    out = html_report.write_html_report(
        tmp_path / "rep",
        recs,
        {"images": 3, "classified": 3, "failed": 0},
        labels=["cat", "dog"],
        truths=["cat", "dog", "dog"],
        matrices=[m],
        title="Evaluation <b>",
    )
    assert out == str(tmp_path / "rep" / "report.html")
    data = page_data(tmp_path / "rep")
    assert [data["labels"][t] for t in data["truth"]] == ["cat", "dog", "dog"]
    html = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert "<title>Evaluation &lt;b&gt;</title>" in html and 'href="#matrix-0"' in html
    cells = re.findall(r'<td class="num (heat\d)( diag)?">(\d+)</td>', html)
    assert cells == [("heat9", " diag", "1"), ("heat0", "", "0"), ("heat9", "", "1"), ("heat9", " diag", "1")]
    with pytest.raises(InputError, match="expected 2 rows of 2 counts"):
        html_report.Matrix("m", ["a", "b"], ["a", "b"], [[1, 2]])
    with pytest.raises(InputError, match="non-negative integers"):
        html_report.Matrix("m", ["a"], ["a"], [[-1]])
    with pytest.raises(InputError, match="3 records but 2 truths"):
        html_report.write_html_report(tmp_path / "rep", recs, {}, truths=["cat", "dog"])


def test_thumbnails_are_made_a_few_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays flat: at most `workers` images are decoded at once and each thumbnail is on
    disk before the next is collected; results come back in input order."""
    import threading

    live, peak, lock = [0], [0], threading.Lock()
    real = thumbnails.thumbnail_jpeg

    def counting(source: Any, size: int, quality: int) -> Any:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            return real(source, size, quality)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(thumbnails, "thumbnail_jpeg", counting)
    img = tmp_path / "a.jpg"
    img.write_bytes(encode(photo(600, 400), "JPEG"))
    out = tmp_path / "thumbs"
    out.mkdir()
    done = []
    made = thumbnails.write_thumbnails(str(out), [str(img)] * 40 + [None], workers=2, progress=done.append)
    assert peak[0] <= 2 and len(done) == 41
    assert [t.file for t in made] == [f"{i}.jpg" for i in range(40)] + [None]
    assert made[-1].error == "no image"


# -- in the browser ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_dir(tmp_path_factory, "report-screenshots")


def only_local(requests: list[str]) -> list[str]:
    return [u for u in requests if not u.startswith(("file://", "data:", "blob:"))]


def test_report_in_the_browser(browser: Any, shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rep, want = classify(tmp_path, monkeypatch)
    data = page_data(rep)
    n = len(data["path"])
    w = watch(browser)
    page = w.page
    page.goto((rep / "report.html").as_uri())
    w.until("document.body.dataset.ready", what="the page's script")
    # every classified image in the gallery (all classes open: few of them), loaded
    loaded = w.until(images_loaded("#gallery-groups img", n - 1), what="the gallery's thumbnails")
    assert loaded == n - 1
    tiles = page.locator("#gallery-groups figure.tile")
    assert tiles.count() == n
    shown = {page.locator("#gallery-groups figure.tile .file").nth(i).text_content() for i in range(n)}
    assert shown == set(want) | {"zz_broken.jpg"}  # hostile names shown as text
    broken = page.locator('#gallery-groups details[data-group="failed"] .placeholder')
    assert broken.count() == 1 and "could not be read" in broken.first.text_content()
    for name, label in want.items():  # each image under its class
        group = page.locator("#gallery-groups details.group", has=page.get_by_text(name, exact=True))
        assert group.get_attribute("data-group") == label, name
    assert w.until(images_loaded("#charts img", 5), what="the charts") == 5
    # the table: one row per image, sorting, filtering
    rows = page.locator("#table-body tr")
    assert rows.count() == n
    assert page.text_content("#table-count") == f"Showing 1–{n} of {n} matching images"

    def scores() -> list[float]:
        cells = page.locator("#table-body td:nth-child(5)").all_text_contents()
        return [float(t.rstrip("%")) for t in cells if t != "–"]

    page.click('th[data-key="score"] button')
    assert scores() == sorted(scores(), reverse=True) and len(scores()) == n - 1
    assert page.get_attribute('th[data-key="score"]', "aria-sort") == "descending"
    page.click('th[data-key="score"] button')
    assert scores() == sorted(scores())
    page.click('th[data-key="file"] button')
    files = page.locator("#table-body td.file").all_text_contents()
    numbered = [f.rsplit("/", 1)[-1] for f in files if re.search(r"/\d\d_", f)]
    assert numbered == sorted(numbered) and len(numbered) == 9
    page.click('th[data-key="file"] button')
    assert page.locator("#table-body td.file").all_text_contents() == files[::-1]
    page.fill("#table-filter", "zz_broken")
    w.until("document.querySelectorAll('#table-body tr').length === 1", what="the filter")
    assert "cannot read image" in page.text_content("#table-body td.err")  # the fake model's message
    page.fill("#table-filter", "")
    page.select_option("#table-class", str(LABELS.index("green")))
    w.until(f"document.querySelectorAll('#table-body tr').length === {list(want.values()).count('green')}")
    page.select_option("#table-class", "")
    page.select_option("#table-status", "failed")
    w.until("document.querySelectorAll('#table-body tr').length === 1")
    page.select_option("#table-status", "")
    assert w.until(images_loaded("#table-body img", n - 1), what="the table's thumbnails") == n - 1
    # least confident first, on request
    page.select_option("#gallery-order", "asc")
    red = page.locator('#gallery-groups details[data-group="red"] .score').all_text_contents()
    assert [float(s.rstrip("%")) for s in red] == sorted(float(s.rstrip("%")) for s in red)
    w.shot(shots, "report.png")
    assert w.dialogs == [] and page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert w.console_errors() == []
    assert only_local(w.requests) == [], "the report asked the network"
    assert any(u.endswith("/thumbnails/0.jpg") for u in w.requests)


@pytest.mark.slow
def test_report_of_10000_images_pages(
    browser: Any, shots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10,000 images: the table and each class's gallery show one page at a time (the DOM stays
    small), paging and sorting reach every row."""
    tiny = encode(Image.new("RGB", (16, 12), (90, 120, 200)), "JPEG")
    monkeypatch.setattr(thumbnails, "thumbnail_jpeg", lambda source, size, quality: (tiny, 16, 12))
    labels = [f"class {k}" for k in range(5)]
    recs = [
        Record(
            f"/data/photos/{i:05d}.jpg",
            labels[i % 5],
            round(0.2 + 0.8 * ((i * 7919) % 10000) / 10000, 6),
            width=4000,
            height=3000,
        )
        for i in range(10_000)
    ]
    rep = tmp_path / "rep"
    write_report(recs, str(rep), labels, contact_sheet=0)
    w = watch(browser)
    page = w.page
    page.goto((rep / "report.html").as_uri())
    w.until("document.body.dataset.ready", timeout=60, what="the page's script")
    assert page.text_content("#table-count") == "Showing 1–50 of 10,000 matching images"
    assert page.locator("#table-body tr").count() == 50
    assert page.locator("#gallery-groups figure.tile").count() == 5 * 48  # five classes open, one page each
    assert page.evaluate("document.querySelectorAll('img').length") < 400
    page.select_option("#table-size", "250")
    page.click('th[data-key="score"] button')
    top = page.locator("#table-body td:nth-child(5)").first.text_content()
    assert top == f"{100 * max(r.score for r in recs):.1f}%"  # type: ignore[type-var]
    for _ in range(39):
        page.click("#table-pager .next")
    assert page.text_content("#table-count") == "Showing 9,751–10,000 of 10,000 matching images"
    assert page.locator("#table-pager .next").is_disabled()
    page.fill("#table-filter", "09999")
    w.until("document.querySelectorAll('#table-body tr').length === 1")
    group = page.locator('#gallery-groups details[data-group="class 0"]')
    group.locator(".pager .next").click()
    assert group.locator(".where").text_content() == "page 2 of 42"
    w.shot(shots, "report-10000.png")
    assert w.console_errors() == [] and only_local(w.requests) == []
