"""Inputs that cost memory or break text handling (issue 11): huge text, many labels, non-UTF-8
text, high-bit-depth images under one decode memory budget, video frames over the pixel limit.

Memory is measured on a child process: its peak RSS from ``os.wait4`` (exact, per child), under
an address-space limit (``ulimit -v``) so that a regression fails instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

import clip_rt
from clip_rt.cli import common, main
from clip_rt.engine.prompt_cache import PromptCache, text_key
from clip_rt.errors import ImageLoadError, InputError
from clip_rt.inputs import budget as budget_mod
from clip_rt.inputs import video
from clip_rt.inputs.preprocess import _finite_extrema
from clip_rt_fixtures.fake_bundle import build_fake_bundle

CLI = "import sys; sys.argv[0] = 'clip-rt'; from clip_rt.cli import main; main()"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-clip", precisions=("fp32",))


# The child's own peak: `ru_maxrss` from wait4 is no good here, since Linux carries the
# pre-exec high-water mark of the forked copy of this (large, late in a test session) pytest
# process into the child's figure. VmHWM belongs to the address space exec made: the wrapper
# writes it at exit.
_MEASURED = (
    "import atexit, os, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))\n"
    "    with open(os.environ['CLIP_RT_TEST_PEAK'], 'w') as out:\n"
    "        out.write(kb)\n"
    "atexit.register(_peak)\n"
    "code, sys.argv = sys.argv[1], ['-c', *sys.argv[2:]]\n"
    "exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
)


def run_measured(
    args: list[Any], *, limit_mb: int, env: Optional[dict[str, str]] = None, timeout: float = 300
) -> tuple[int, str, str, float]:
    """Run ``[python, "-c", code, *argv]`` under an address-space limit; (exit code, stdout,
    stderr, peak RSS MB of the child's own address space)."""
    if len(args) < 3 or args[1] != "-c":
        raise ValueError(f"run_measured runs python -c CODE ...; got {args[:2]}")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    fd, peak_file = tempfile.mkstemp(prefix="clip-rt-peak-")
    os.close(fd)
    try:
        proc = subprocess.Popen(
            [args[0], "-c", _MEASURED, *args[2:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=limit,
            env={**os.environ, **(env or {}), "CLIP_RT_TEST_PEAK": peak_file},
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{args[:2]} did not finish in {timeout} s")
        text = Path(peak_file).read_text().strip()
    finally:
        os.unlink(peak_file)
    if not text:
        pytest.fail(f"the child did not report its peak memory (exit {proc.returncode}): {err.decode()[-2000:]}")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), int(text) / 1024


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def one_error_line(result: Any) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def small_image(path: Path, colour: tuple[int, int, int] = (200, 30, 20)) -> Path:
    Image.new("RGB", (40, 30), colour).save(path)
    return path


# -- huge text ------------------------------------------------------------------------------------
def test_50_mb_of_text_is_cut_before_tokenising(bundle: Path, clip_home: Path) -> None:
    """Before: the whole text was cleaned, tokenised and stored as a cache key (50 MB of text:
    7.2 GB RSS, 66 s). Now only its start is used, and the cache key is a hash."""
    code = (
        f"import clip_rt, warnings; warnings.simplefilter('ignore')\n"
        f"m = clip_rt.load({str(bundle)!r})\n"
        "text = 'a photo of a red cat . ' * 2_200_000\n"  # 50.6 MB
        "print(m.encode_text([text]).shape, m.encode_text([text[:200]]).shape)"
    )
    rc, out, err, peak = run_measured([sys.executable, "-c", code], limit_mb=3000, env={"CLIP_RT_HOME": str(clip_home)})
    assert rc == 0, err
    assert out.strip() == "(1, 8) (1, 8)"
    assert peak < 400, f"peak RSS {peak:.0f} MB"
    con = sqlite3.connect(clip_home / "cache" / "prompts.sqlite")
    keys = [row[0] for row in con.execute("SELECT text FROM text_embeddings")]
    con.close()
    assert len(keys) == 2 and max(len(k) for k in keys) <= 256
    assert any(k.startswith("sha256:") for k in keys)


def test_the_cut_text_gives_the_embedding_of_its_start(bundle: Path) -> None:
    model = clip_rt.load(bundle, cache=False)
    head = "a photo of the big red cat on a small green car"
    with pytest.warns(UserWarning, match=r"over \d+ tokens"):
        long = model.encode_text([head + " . dog" * 20_000])
    with pytest.warns(UserWarning, match="truncated"):
        short = model.encode_text([head + " . dog" * 10])
    np.testing.assert_array_equal(long, short)


def test_text_keys_are_short_and_never_collide_with_a_text() -> None:
    assert text_key("a photo of a cat") == "a photo of a cat"
    long = "x" * 257
    assert text_key(long).startswith("sha256:") and len(text_key(long)) == 71
    assert text_key(text_key(long)) == text_key(long)  # a short text that looks like a key is itself ...
    assert text_key(long) != long  # ... and only a 257+ character text is hashed to it
    assert text_key("caf\udce9").startswith("sha256:")  # SQLite cannot bind lone surrogates


# -- many labels --------------------------------------------------------------------------------------
class CountingStr(str):
    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingStr.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_duplicate_labels_are_found_in_linear_time() -> None:
    """parse_labels used list.count per label: 50,000 labels took 25 s (n^2 comparisons)."""
    labels = [CountingStr(f"label {i}") for i in range(50_000)] + [CountingStr("label 7")]
    CountingStr.comparisons = 0
    assert common.duplicates(labels) == ["label 7"]
    assert CountingStr.comparisons < 1_000  # hashing, not pairwise comparison


def test_50k_labels_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(f"class {i}" for i in range(50_000)) + "\nclass 3\n")
    import click

    with pytest.raises(click.UsageError, match="duplicate labels: class 3"):
        common.parse_labels(None, str(path))
    path.write_text("\n".join(f"class {i}" for i in range(50_000)))
    assert len(common.parse_labels(None, str(path))) == 50_000
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps({f"class {i}": None for i in range(50_000)}))
    assert len(common.parse_labels(None, str(as_json))) == 50_000


# -- non-UTF-8 text -------------------------------------------------------------------------------
LATIN1 = os.fsdecode(b"caf\xe9")  # a command-line argument that was not UTF-8 (surrogateescape)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["-l", f"{LATIN1},dog"],
            "Error: label 'caf\\xe9' is not valid UTF-8: b'\\xe9' at byte 3; expected UTF-8 text",
        ),
        (
            ["-l", "cat,dog", "--template", f"a {LATIN1} {{}}"],
            "Error: template 'a caf\\xe9 {}' is not valid UTF-8: b'\\xe9' at byte 5; expected UTF-8 text",
        ),
    ],
)
def test_non_utf8_labels_and_templates_on_the_command_line(
    bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """Before: a traceback from SQLite (UnicodeEncodeError binding the prompt)."""
    img = small_image(tmp_path / "a.png")
    assert one_error_line(cli("classify", str(img), "-m", str(bundle), *args)) == message


def test_non_utf8_similarity_text(bundle: Path, tmp_path: Path) -> None:
    img = small_image(tmp_path / "a.png")
    line = one_error_line(cli("similarity", str(img), "a dog", f"a {LATIN1}", "-m", str(bundle)))
    assert line == "Error: text #1 'a caf\\xe9' is not valid UTF-8: b'\\xe9' at byte 5; expected UTF-8 text"


@pytest.mark.parametrize(
    "name, content, line",
    [
        (
            "labels.txt",
            b"cat\ndog\ncaf\xe9 au lait\n",
            "line 3 'caf\\xe9 au lait' is not valid UTF-8: b'\\xe9' at byte 3",
        ),
        (
            "labels.json",
            b'{"cat": null,\n "caf\xe9": null}',
            "line 2 ' \"caf\\xe9\": null}' is not valid UTF-8: b'\\xe9' at byte 5",
        ),
    ],
)
def test_non_utf8_labels_file(bundle: Path, tmp_path: Path, name: str, content: bytes, line: str) -> None:
    labels = tmp_path / name
    labels.write_bytes(content)
    img = small_image(tmp_path / "a.png")
    got = one_error_line(cli("classify", str(img), "-m", str(bundle), "--labels-file", str(labels)))
    assert got == f"Error: --labels-file {str(labels)!r}: {line}; expected a UTF-8 text file"


def test_non_utf8_argv_in_a_real_process(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    img = small_image(tmp_path / "a.png")
    r = subprocess.run(
        [sys.executable, "-c", CLI, "classify", str(img), "-m", str(bundle), "-l", b"caf\xe9,dog"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "CLIP_RT_HOME": str(clip_home)},
    )
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [
        "Error: label 'caf\\xe9' is not valid UTF-8: b'\\xe9' at byte 3; expected UTF-8 text"
    ]


def test_non_utf8_text_in_the_api(bundle: Path) -> None:
    model = clip_rt.load(bundle)
    with pytest.raises(InputError, match=r"text #1 'caf\\xe9' is not valid UTF-8: b'\\xe9' at byte 3"):
        model.encode_text(["cat", LATIN1])
    with pytest.raises(InputError, match=r"label 'x\\xed\\xa0\\x80' is not valid UTF-8"):
        model.classifier(["cat", "x\ud800"])
    assert model.open_encoders == ()


def test_the_prompt_cache_never_breaks_inference(bundle: Path, clip_home: Path) -> None:
    """Text SQLite cannot bind, and rows of the wrong types, are misses, never exceptions."""
    cache = PromptCache("f" * 32, "fp32", dim=8)
    cache.put_many({LATIN1: np.ones(8, np.float32)})
    assert list(cache.get_many([LATIN1])) == [LATIN1]
    cache.close()
    model = clip_rt.load(bundle)
    want = model.encode_text(["a red cat"])
    model.close()
    con = sqlite3.connect(clip_home / "cache" / "prompts.sqlite")
    con.execute("UPDATE text_embeddings SET embedding = 123, dim = 'x'")  # SQLite keeps any type
    con.commit()
    con.close()
    again = clip_rt.load(bundle)
    np.testing.assert_array_equal(again.encode_text(["a red cat"]), want)


# -- high-bit-depth images and the decode memory budget --------------------------------------------
@pytest.fixture(scope="module")
def float_tiffs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 names of one 9400x9400 float (F) TIFF, deflate-compressed to 0.7 MB (353 MB decoded),
    and 3 small PNGs."""
    folder = tmp_path_factory.mktemp("float-tiffs")
    img = Image.new("F", (9400, 9400), 0.25)
    ImageDraw.Draw(img).rectangle((1000, 1000, 5000, 7000), fill=0.75)
    img.save(folder / "big0.tif", compression="tiff_deflate")
    del img
    for i in range(1, 4):
        os.link(folder / "big0.tif", folder / f"big{i}.tif")
    for i in range(3):
        small_image(folder / f"small{i}.png", (40 * i, 100, 200))
    return folder


@pytest.mark.slow
def test_float_tiffs_decode_within_one_budget(bundle: Path, float_tiffs: Path, tmp_path: Path, clip_home: Path) -> None:
    """Before: 1.2 GB per file, 2.1 GB with 2 decode threads, 4.2 GB with 4; under `ulimit -v 3 GB`
    the run died with MemoryError. Now the decode threads share one budget and the high-bit path
    copies nothing: peak RSS 414 MB on this machine."""
    out = tmp_path / "run.jsonl"
    rc, _, err, peak = run_measured(
        [sys.executable, "-c", CLI, "classify", str(float_tiffs), "-m", str(bundle), "-l", "cat,dog", "-o", str(out)],
        limit_mb=3000,
        env={"CLIP_RT_HOME": str(clip_home)},
    )
    assert rc == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 7 and all(r["error"] is None for r in records)
    assert [r["width"] for r in records if "big" in r["path"]] == [9400] * 4
    assert peak < 800, f"peak RSS {peak:.0f} MB"


@pytest.fixture
def decode_budget_mb() -> Any:
    """Set the process-wide decode budget for one test, then put it back."""
    budget = budget_mod.decode_budget()
    saved = budget.limit
    yield lambda mb: budget_mod.set_decode_memory(mb)
    budget.set_limit(saved)


def test_an_image_over_the_budget_is_recorded_and_resume_moves_past_it(
    bundle: Path, tmp_path: Path, decode_budget_mb: Any
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("F", (3000, 3000), 0.5).save(folder / "big.tif")  # 2 x 36 MB to decode and preprocess
    small_image(folder / "small.png")
    decode_budget_mb(50)
    out = tmp_path / "run.jsonl"
    r = cli("classify", str(folder), "-m", str(bundle), "-l", "cat,dog", "-o", str(out))
    assert r.exit_code == 1, r.output
    records = {Path(rec["path"]).name: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert records["small.png"]["error"] is None
    assert records["big.tif"]["error"] == (
        f"{folder / 'big.tif'}: a 3000x3000 F image needs about 69 MB to decode and preprocess, more than the "
        "decode memory budget of 50 MB (CLIP_RT_DECODE_MEMORY_MB, or clip_rt.inputs.budget.set_decode_memory)"
    )
    again = cli("classify", str(folder), "-m", str(bundle), "-l", "cat,dog", "-o", str(out), "--resume")
    assert "2 processed, 1 failed, 2 already done" in again.stderr and again.exit_code == 1
    assert len(out.read_text().splitlines()) == 2  # nothing retried, nothing duplicated


def test_running_out_of_memory_on_one_file_is_that_files_record(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MemoryError while decoding used to end the run, and `--resume` died on the same file again."""
    from PIL import ImageFile

    good, bad = small_image(tmp_path / "good.png"), small_image(tmp_path / "huge.png")
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        if str(getattr(self.fp, "name", "")).endswith("huge.png"):
            raise MemoryError  # as a decoder does when the allocation fails
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    items = list(clip_rt.load(bundle).iter_images([str(good), str(bad), str(good)]))
    assert [it.ok for it in items] == [True, False, True]
    assert items[1].error.startswith(f"{bad}: out of memory while decoding or preprocessing it (MemoryError)")


def test_the_budget_makes_decode_threads_take_turns() -> None:
    budget = budget_mod.DecodeBudget(1000)
    holding, log = threading.Event(), []

    def first() -> None:
        with budget.reserve(600, "a", "image a"):
            log.append("a in")
            holding.set()
            time.sleep(0.3)
            log.append("a out")

    def second() -> None:
        holding.wait()
        with budget.reserve(600, "b", "image b"):
            log.append("b in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert log == ["a in", "a out", "b in"] and budget.used == 0
    with pytest.raises(ImageLoadError, match="image c needs about 0 MB"):
        with budget.reserve(1001, "c", "image c"):
            pass


def test_decode_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(budget_mod.ENV, "lots")
    with pytest.raises(InputError, match="CLIP_RT_DECODE_MEMORY_MB must be a positive number of megabytes, got 'lots'"):
        budget_mod._from_env()
    monkeypatch.setenv(budget_mod.ENV, "256")
    assert budget_mod._from_env() == 256 << 20


@pytest.mark.parametrize(
    "values",
    [
        [[0.2, 0.9], [0.5, 0.1]],
        [[np.nan, 0.9], [0.5, 0.1]],  # Pillow's getextrema gives NaN when the first pixel is NaN
        [[1.0, np.inf], [-np.inf, 7.0]],
        [[np.nan, np.nan]],
    ],
)
def test_high_bit_extrema_without_copies_equal_the_numpy_ones(values: list[list[float]]) -> None:
    arr = np.array(values, np.float32)
    img = Image.fromarray(arr, "F")
    finite = arr[np.isfinite(arr)]
    want = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    assert _finite_extrema(img, rows_per_strip=1) == want


# -- video ----------------------------------------------------------------------------------------
def _mjpeg_video(path: Path, width: int, height: int, frames: int) -> Path:
    """*frames* copies of one flat frame (encoded once: a 12000x12000 frame takes seconds)."""
    av = pytest.importorskip("av")
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=2)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        frame = av.VideoFrame(width, height, "yuvj420p")
        for i, plane in enumerate(frame.planes):
            plane.update(bytes([100 if i == 0 else 128]) * plane.buffer_size)
        frame.pts = 0
        data = b"".join(bytes(p) for p in stream.encode(frame)) + b"".join(bytes(p) for p in stream.encode())
        for k in range(frames):
            packet = av.Packet(data)
            packet.stream, packet.time_base = stream, Fraction(1, 2)
            packet.pts = packet.dts = k
            container.mux(packet)
    return path


def test_video_frames_over_the_image_pixel_limit_are_refused_before_decoding(
    bundle: Path, tmp_path: Path, clip_home: Path
) -> None:
    """Before: a 10-frame 12000x12000 MKV reached 6.3 GB RSS (under `ulimit -v 3 GB`: MemoryError)."""
    path = _mjpeg_video(tmp_path / "huge.mkv", 12000, 12000, 10)
    rc, _, err, peak = run_measured(
        [sys.executable, "-c", CLI, "video", str(path), "-m", str(bundle), "-l", "cat,dog"],
        limit_mb=3000,
        env={"CLIP_RT_HOME": str(clip_home)},
    )
    assert rc == 1
    assert err.splitlines() == [
        f"Error: video {str(path)!r}: frames of 12000x12000 = 144000000 pixels are over the limit of 89478485 that "
        "images have too (PIL.Image.MAX_IMAGE_PIXELS; raise it only for files you trust)"
    ]
    assert peak < 300, f"peak RSS {peak:.0f} MB"


def test_video_pixel_limit_follows_pil(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _mjpeg_video(tmp_path / "small.mkv", 64, 48, 4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    line = one_error_line(cli("video", str(path), "-m", str(bundle), "-l", "cat,dog"))
    assert "frames of 64x48 = 3072 pixels are over the limit of 3000" in line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3072)
    assert cli("video", str(path), "-m", str(bundle), "-l", "cat,dog").exit_code == 0


def test_video_frames_are_converted_like_pyav_and_shrunk_with_draft(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for _ in range(4):
            arr = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            assert np.array_equal(np.asarray(video.to_image(frame)), np.asarray(frame.to_image()))
    shrunk = list(video.sample_frames(str(path), 0.25, shrink=lambda w, h: (84, 64)))
    assert [f.image.size for f in shrunk] == [(86, 64)] * 4  # the larger of the two scales, rounded up
    kept = list(video.sample_frames(str(path), 0.25, shrink=lambda w, h: (640, 480)))  # never scaled up
    assert [f.image.size for f in kept] == [(320, 240)] * 4


def test_video_draft_gives_the_same_labels_with_less_memory(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    path = _mjpeg_video(tmp_path / "big.mkv", 6000, 6000, 4)
    peaks = {}
    for flag in ("", "--draft"):
        rc, out, err, peaks[flag] = run_measured(
            [
                sys.executable,
                "-c",
                CLI,
                "video",
                str(path),
                "-m",
                str(bundle),
                "-l",
                "cat,dog",
                "--format",
                "json",
                *([flag] if flag else []),
            ],
            limit_mb=3000,
            env={"CLIP_RT_HOME": str(clip_home)},
        )
        assert rc == 0, err
    assert peaks["--draft"] < peaks[""] / 2, peaks


def test_onnx_is_in_the_test_extra() -> None:
    """clip_rt_fixtures.fake_bundle imports onnx, which only the [export] extra used to install."""
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert any(dep.replace(" ", "").startswith("onnx>=") for dep in data["project"]["optional-dependencies"]["test"])
