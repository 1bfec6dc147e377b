"""Hostile inputs, round 3 (docs/reliability.md): outputs never destroy what a run reads or what
a user had, every input read whole is bounded and type-checked, and a failed decode frees its
pixels at once. The server's share is tests/test_serve_hostile.py.

Torch-free: the bundle is tests/fake_bundle.py, run by the real runtime and CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt.cli import main
from clip_rt.errors import BundleError, InputError, OutputError
from clip_rt_fixtures.fake_bundle import build_fake_bundle  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("hostile") / "fake-clip")


def photo(path: Path, colour: tuple[int, int, int] = (200, 30, 20), size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, args, env=env)


def run_cli(
    args: list[str],
    *,
    stdin: Any = None,
    stdout: Any = subprocess.PIPE,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """The real `clip-rt` in a subprocess (real stdin/stdout descriptors)."""
    return subprocess.run(
        [sys.executable, "-m", "clip_rt", *args],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        text=True,
    )


# -- 1. outputs never destroy an input ----------------------------------------------------------
@pytest.mark.parametrize("how", ["same path", "hard link", "symbolic link"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_classify_output_that_is_an_input_is_refused(bundle: Path, tmp_path: Path, how: str, fmt: str) -> None:
    img = photo(tmp_path / "pics" / "a.png")
    before = digest(img)
    out = tmp_path / "pics" / "out"
    if how == "same path":
        out = img
    elif how == "hard link":
        os.link(img, out)
    else:
        out.symlink_to(img)
    r = cli(["classify", str(tmp_path / "pics"), "-l", "cat,dog", "-m", str(bundle), "-o", str(out), "--format", fmt])
    assert r.exit_code == 1, r.output
    assert "it is the input" in r.output and "nothing was written" in r.output, r.output
    assert digest(img) == before
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted({"a.png", out.name})  # no sidecar, no lock


def test_classify_output_that_is_the_labels_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    img = photo(tmp_path / "a.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    r = cli(
        ["classify", str(img), "--labels-file", str(labels), "-m", str(bundle), "-o", str(labels), "--format", "csv"]
    )
    assert r.exit_code == 1 and f"it is the input {str(labels)!r}" in r.output, r.output
    assert labels.read_text() == "cat\ndog\n"


def test_output_that_is_the_path_list_on_stdin_is_refused(bundle: Path, tmp_path: Path) -> None:
    img = photo(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{img}\n")
    with open(listing, "rb") as stdin:
        r = run_cli(
            ["classify", "-", "-l", "cat,dog", "-m", str(bundle), "-o", str(listing), "--format", "csv"], stdin=stdin
        )
    assert r.returncode == 1 and "the path list this command reads on standard input" in r.stderr, r.stderr
    assert listing.read_text() == f"{img}\n"


def test_standard_output_appending_to_an_input_is_refused(bundle: Path, tmp_path: Path) -> None:
    img = photo(tmp_path / "a.png")
    before = digest(img)
    with open(img, "ab") as stdout:
        r = run_cli(["classify", str(img), "-l", "cat,dog", "-m", str(bundle)], stdout=stdout)
    assert r.returncode == 1 and "standard output is the input" in r.stderr, r.stderr
    assert digest(img) == before
    with open(img, "ab") as stdout:
        r = run_cli(["similarity", str(img), "a cat", "a dog", "-m", str(bundle)], stdout=stdout)
    assert r.returncode == 1 and "standard output is the input" in r.stderr, r.stderr
    assert digest(img) == before
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: refused before it is opened")
    with open(video, "ab") as stdout:
        r = run_cli(["video", str(video), "-l", "cat,dog", "-m", str(bundle)], stdout=stdout)
    assert r.returncode == 1 and "standard output is the input" in r.stderr, r.stderr


def test_plot_and_report_files_that_are_inputs_are_refused(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    img = photo(tmp_path / "a.png")
    before = digest(img)
    r = cli(["similarity", str(img), "a cat", "a dog", "-m", str(bundle), "--plot", str(img)])
    assert r.exit_code == 1 and "cannot write plot" in r.output and "it is the input" in r.output, r.output
    with pytest.raises(OutputError, match="it is the input"):
        clip_rt.plot_similarity(str(img), ["a", "b"], [0.5, 0.5], img)
    # A contact sheet from an earlier report, classified as an image of the folder: not replaced.
    rep = tmp_path / "rep"
    sheet = photo(rep / "contact_sheet.png")
    sheet_before = digest(sheet)
    r = cli(["classify", str(rep), "-l", "cat,dog", "-m", str(bundle), "--report", str(rep)])
    assert r.exit_code == 1 and "cannot write report file" in r.output and "it is the input" in r.output, r.output
    assert digest(sheet) == sheet_before and sorted(p.name for p in rep.iterdir()) == ["contact_sheet.png"]
    # -o and a report file are one file: refused before anything is written.
    r = cli(
        [
            "classify",
            str(img),
            "-l",
            "cat,dog",
            "-m",
            str(bundle),
            "-o",
            str(tmp_path / "r2" / "results.csv"),
            "--report",
            str(tmp_path / "r2"),
        ]
    )
    assert r.exit_code == 1 and "are the same file" in r.output, r.output
    assert digest(img) == before


def test_index_never_cleans_a_folder_it_did_not_make(bundle: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photo(pics / "a.png")
    foreign = tmp_path / "site"
    foreign.mkdir()
    files = {
        "index.json": b'{"title": "my site"}',
        "embeddings-1.npy": b"my own data",
        "notes.txt": b"x",
        ".index.json.1-2.tmp": b"mine too",
    }
    for name, data in files.items():
        (foreign / name).write_bytes(data)
    for extra in ([], ["--rebuild"]):
        r = cli(["index", str(pics), "-o", str(foreign), "-m", str(bundle), *extra])
        assert r.exit_code == 1 and "is not a clip-rt index" in r.output and "no .clip-rt-index marker" in r.output, (
            r.output
        )
        assert {p.name: p.read_bytes() for p in foreign.iterdir()} == files
    # Only clip-rt's names, but not an index clip-rt wrote: still refused, still untouched.
    (foreign / "notes.txt").unlink()
    del files["notes.txt"]
    r = cli(["index", str(pics), "-o", str(foreign), "-m", str(bundle), "--rebuild"])
    assert r.exit_code == 1 and "is not a clip-rt index" in r.output, r.output
    assert {p.name: p.read_bytes() for p in foreign.iterdir()} == files


def test_an_index_from_before_the_marker_stays_usable(bundle: Path, tmp_path: Path) -> None:
    from clip_rt.outputs.search_index import MARKER_FILE

    pics = tmp_path / "pics"
    photo(pics / "a.png")
    idx = tmp_path / "idx"
    assert cli(["index", str(pics), "-o", str(idx), "-m", str(bundle)]).exit_code == 0
    (idx / MARKER_FILE).unlink()  # as an older clip-rt left it
    assert cli(["search", str(idx), "a cat", "-m", str(bundle)]).exit_code == 0  # read-only use: as before
    photo(pics / "b.png", (10, 200, 10))
    r = cli(["index", str(pics), "-o", str(idx), "-m", str(bundle)])
    assert r.exit_code == 0 and "1 new" in r.output, r.output
    assert (idx / MARKER_FILE).is_file()  # recognised by its files, and marked
    # An older index with a file of someone else's beside it is not taken for one.
    (idx / MARKER_FILE).unlink()
    (idx / "README").write_text("mine")
    r = cli(["index", str(pics), "-o", str(idx), "-m", str(bundle), "--rebuild"])
    assert r.exit_code == 1 and "'README'" in r.output, r.output
    # A new or empty folder is made an index.
    (tmp_path / "empty").mkdir()
    assert cli(["index", str(pics), "-o", str(tmp_path / "empty"), "-m", str(bundle)]).exit_code == 0
    assert (tmp_path / "empty" / MARKER_FILE).is_file()


def test_ray_output_folder_needs_its_job_description(bundle: Path, tmp_path: Path) -> None:
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.scale import parts

    ident = parts.identity("embed", read_manifest(bundle), "fp32")
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-2023.parquet").write_bytes(b"the user's own table")  # our name, not our file
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not a clip-rt job"):
            parts.prepare_output(str(out), ident, overwrite=overwrite)
    assert (out / "part-2023.parquet").read_bytes() == b"the user's own table"
    (out / parts.JOB_FILE).mkdir()
    with pytest.raises(InputError, match="is not a regular file"):
        parts.prepare_output(str(out), ident, overwrite=True)


# -- 2. inputs read whole are bounded and type-checked ----------------------------------------------
def test_labels_file_that_is_a_device_or_too_large(bundle: Path, tmp_path: Path) -> None:
    img = photo(tmp_path / "a.png")
    r = cli(["classify", str(img), "--labels-file", "/dev/zero", "-m", str(bundle)])
    assert r.exit_code == 1 and "'/dev/zero' is a character device; expected a regular file or a pipe" in r.output
    big = tmp_path / "labels.txt"
    big.write_text("cat\n" * 5000)  # 20 KB
    r = cli(["classify", str(img), "--labels-file", str(big), "-m", str(bundle)], env={"CLIP_RT_MAX_LABELS_MB": "0.01"})
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: --labels-file {str(big)!r} is too large (20000 bytes, the limit is 10485 bytes; set "
        "CLIP_RT_MAX_LABELS_MB (megabytes) to raise it)"
    ), r.output
    big.write_text('{"cat": null, "dog": ["a photo of a dog", "' + "x" * 20000 + '"]}')
    big = big.rename(tmp_path / "labels.json")
    r = cli(["classify", str(img), "--labels-file", str(big), "-m", str(bundle)], env={"CLIP_RT_MAX_LABELS_MB": "0.01"})
    assert r.exit_code == 1 and "CLIP_RT_MAX_LABELS_MB" in r.output and "Traceback" not in r.output, r.output
    r = cli(["classify", str(img), "--labels-file", str(big), "-m", str(bundle)], env={"CLIP_RT_MAX_LABELS_MB": "x"})
    assert r.exit_code == 1 and "CLIP_RT_MAX_LABELS_MB must be a positive number of megabytes, got 'x'" in r.output


def test_labels_file_may_be_a_pipe(bundle: Path, tmp_path: Path) -> None:
    img = photo(tmp_path / "a.png")
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:
            f.write("cat\ndog\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    r = cli(["classify", str(img), "--labels-file", str(fifo), "-m", str(bundle), "--format", "json"])
    writer.join(10)
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output[r.output.index("[") : r.output.rindex("]") + 1])[0]["scores"]) == {"cat", "dog"}


def test_path_list_on_stdin_is_bounded(bundle: Path, tmp_path: Path) -> None:
    from clip_rt.inputs.discover import read_path_list

    assert read_path_list(io.BytesIO(b"a.jpg\r\n\n  \nb c.png\nlast")) == ["a.jpg", "b c.png", "last"]
    with pytest.raises(
        InputError,
        match=r"path list on standard input is too large \(the limit is 100 bytes; "
        r"set CLIP_RT_MAX_PATH_LIST_MB",
    ):
        read_path_list(io.BytesIO(b"x.jpg\n" * 100), limit=100)
    # An endless stream without a newline ends at the limit, in one line on stderr.
    with open("/dev/zero", "rb") as zero:
        r = run_cli(
            ["classify", "-", "-l", "cat,dog", "-m", str(bundle)],
            stdin=zero,
            env={"CLIP_RT_MAX_PATH_LIST_MB": "4"},
            timeout=60,
        )
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "Error: the path list on standard input is too large (the limit is 4.0 MB; set CLIP_RT_MAX_PATH_LIST_MB "
        "(megabytes) to raise it)"
    ], r.stderr


def test_config_manifest_and_tokenizer_that_are_devices(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    import shutil

    from clip_rt.bundle.manifest import read_manifest

    img = photo(tmp_path / "a.png")
    (clip_home / "config.toml").symlink_to("/dev/zero")
    r = cli(["classify", str(img), "-l", "cat,dog"])
    assert (
        r.exit_code == 1 and "config file" in r.output and "is a character device; expected a regular file" in r.output
    ), r.output
    (clip_home / "config.toml").unlink()
    # Inside the bundle (a link to /dev/zero is refused earlier, as outside the bundle): a FIFO,
    # which reading would block on, and a character device where the system lets us make one.
    b = Path(shutil.copytree(bundle, tmp_path / "b"))
    (b / "manifest.json").unlink()
    os.mkfifo(b / "manifest.json")
    r = cli(["classify", str(img), "-l", "cat,dog", "-m", str(b)])
    assert r.exit_code == 1 and "its manifest.json is a FIFO (pipe); expected a regular file" in r.output, r.output
    with pytest.raises(BundleError, match=r"the manifest is a FIFO \(pipe\); expected a regular file"):
        read_manifest(b)
    (b / "manifest.json").unlink()
    try:
        os.mknod(b / "manifest.json", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pass
    else:
        with pytest.raises(BundleError, match="the manifest is a character device; expected a regular file"):
            read_manifest(b)
    c = Path(shutil.copytree(bundle, tmp_path / "c"))
    (c / "tokenizer.json").unlink()
    os.mkfifo(c / "tokenizer.json")
    from clip_rt.inputs.hf_tokenizer import open_tokenizer

    with pytest.raises(BundleError, match=r"a FIFO \(pipe\), not a file"):  # the checksum check says so
        clip_rt.load(c, cache=False).encode_text("a cat")
    with pytest.raises(BundleError, match=r"the tokenizer file is a FIFO \(pipe\); expected a regular file"):
        open_tokenizer(c / "tokenizer.json", read_manifest(c).text)  # without the checksum check


def test_files_clip_rt_reads_back_are_never_waited_on(bundle: Path, tmp_path: Path) -> None:
    """A FIFO where a run description or an index.json should be: refused at once, not read
    (opening a FIFO with no writer would block forever)."""
    img = photo(tmp_path / "a.png")
    out = tmp_path / "run.jsonl"
    assert cli(["classify", str(img), "-l", "cat,dog", "-m", str(bundle), "-o", str(out)]).exit_code == 0
    side = tmp_path / "run.jsonl.clip-rt.json"
    side.unlink()
    os.mkfifo(side)
    r = run_cli(["classify", str(img), "-l", "cat,dog", "-m", str(bundle), "-o", str(out), "--resume"], timeout=60)
    assert r.returncode == 1 and "run description" in r.stderr and "FIFO" in r.stderr, r.stderr
    idx = tmp_path / "idx"
    assert cli(["index", str(tmp_path), "-o", str(idx), "-m", str(bundle)]).exit_code == 0
    (idx / "index.json").unlink()
    os.mkfifo(idx / "index.json")
    r = run_cli(["search", str(idx), "a cat", "-m", str(bundle)], timeout=60)
    assert r.returncode == 1 and "index.json is a FIFO (pipe); expected a regular file" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "line, why",
    [
        ("5", "it is a number, not an object"),
        ('["a.png"]', "it is an array, not an object"),
        ('{"label": "cat"}', 'it has no "path" string'),
        ('{"path": "a.png", "top_k": [1]}', "its 'top_k' is not a list of [label, score] pairs"),
        ('{"path": "a.png", "scores": [1]}', "its 'scores' is not an object"),
    ],
)
def test_resume_on_a_jsonl_line_that_is_no_record(bundle: Path, tmp_path: Path, line: str, why: str) -> None:
    img = photo(tmp_path / "a.png")
    out = tmp_path / "run.jsonl"
    assert cli(["classify", str(img), "-l", "cat,dog", "-m", str(bundle), "-o", str(out)]).exit_code == 0
    out.write_text(line + "\n")
    r = cli(["classify", str(img), "-l", "cat,dog", "-m", str(bundle), "-o", str(out), "--resume"])
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: cannot resume {str(out)!r}: line 1 is not a clip-rt record ({why}); expected one JSON object per "
        'line as classify writes them, with a "path" string; run without --resume to start over'
    ), r.output


def test_encode_text_of_a_non_sequence(bundle: Path) -> None:
    model = clip_rt.load(bundle, cache=False)
    for bad, name in ((None, "NoneType"), (5, "int"), (b"cat", "bytes"), ({"cat": 1}, "dict")):
        with pytest.raises(InputError, match=f"texts must be a string or a sequence of strings, got {name}"):
            model.encode_text(bad)  # type: ignore[arg-type]
    assert model.encode_text(("a cat", "a dog")).shape == (2, 8)


def test_prompt_cache_file_is_bounded(tmp_path: Path) -> None:
    import sqlite3

    from clip_rt.engine.prompt_cache import PromptCache

    path = tmp_path / "prompts.sqlite"
    vec = np.ones(4, np.float32)
    with pytest.warns(
        RuntimeWarning,
        match=r"is full for this model \(3 texts, its limit is "
        r"CLIP_RT_PROMPT_CACHE_MAX_ROWS=3\)",
    ):
        with PromptCache("fp", "fp32", dim=4, path=path, max_rows=3) as cache:
            cache.put_many({f"text {i}": vec for i in range(2)})
            cache.put_many({f"text {i}": vec for i in range(2, 5)})  # room for one of them
            assert len(cache.get_many([f"text {i}" for i in range(5)])) == 5  # the rest: in memory
    with PromptCache("other", "fp32", dim=4, path=path, max_rows=3) as other:  # per bundle
        other.put_many({"text 9": vec})
    rows = sqlite3.connect(path).execute("SELECT fingerprint, COUNT(*) FROM text_embeddings GROUP BY 1").fetchall()
    assert sorted(rows) == [("fp", 3), ("other", 1)]


# -- 3. a failed decode frees its pixels at once -------------------------------------------------
PEAK = """
import glob, sys
import clip_rt
model = clip_rt.load(sys.argv[1], low_memory=sys.argv[3] == "low")
failed = sum(it.error is not None for it in model.iter_images(sorted(glob.glob(sys.argv[2] + "/*.png"))))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(failed, int(hwm) // 1024)
"""


def peak_mb(bundle: Path, folder: Path, mode: str) -> tuple[int, int]:
    r = subprocess.run(
        [sys.executable, "-c", PEAK, str(bundle), str(folder), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLIP_RT_DECODE_MEMORY_MB": "1024"},
    )
    assert r.returncode == 0, r.stderr
    failed, mb = (int(x) for x in r.stdout.split())
    return failed, mb


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
@pytest.mark.slow
def test_truncated_huge_images_peak_no_higher_than_valid_ones(bundle: Path, tmp_path: Path) -> None:
    """12 PNGs of 4000x4000 (64 MB each once decoded), cut at 60 %: before, each failure's
    traceback kept its half-decoded frame alive after its budget was released, and the
    look-ahead held a dozen of them (988 MB against 232 MB for the valid folder)."""
    arr = np.zeros((4000, 4000, 3), np.uint8)
    arr[:, :, 0] = (np.arange(4000) % 256)[None, :]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    for kind, payload in (("valid", data), ("truncated", data[: int(len(data) * 0.6)])):
        (tmp_path / kind).mkdir()
        for i in range(12):
            (tmp_path / kind / f"{i:02d}.png").write_bytes(payload)
    for mode in ("normal", "low"):
        ok_failed, ok_peak = peak_mb(bundle, tmp_path / "valid", mode)
        bad_failed, bad_peak = peak_mb(bundle, tmp_path / "truncated", mode)
        assert (ok_failed, bad_failed) == (0, 12)
        assert bad_peak <= ok_peak + 16, (mode, ok_peak, bad_peak)


def test_a_failed_decode_keeps_no_traceback(bundle: Path, tmp_path: Path) -> None:
    """The look-ahead holds failed items as small error records: no traceback whose frames
    could hold a decoded image, also for errors nobody foresaw (their cause is kept)."""
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.engine.pipeline import decode
    from clip_rt.inputs.preprocess import Preprocessor

    bad = tmp_path / "bad.png"
    data = photo(tmp_path / "good.png", size=(300, 200)).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    pre = Preprocessor(read_manifest(bundle).image)
    item = decode(pre, 0, str(bad))
    assert item.pixels is None and "truncated" in str(item.error)
    chain = [item.error, item.error.__cause__, item.error.__context__]
    assert all(e is None or e.__traceback__ is None for e in chain)
    result = pre.try_batch([str(bad), str(tmp_path / "good.png")])
    assert result.indices == [1] and result.failures[0][1].__traceback__ is None
