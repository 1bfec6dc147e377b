"""Output files: CSV quoting and formula neutralising, escaped display paths, outputs that a
failed run never destroys (full disk, read-only folder, a folder where the sidecar goes,
/dev/null, a FIFO), and one run at a time per output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from clip_rt.cli import main
from clip_rt.errors import InputError
from clip_rt.outputs.files import OutputLock
from clip_rt.outputs.records import Record, RecordWriter, csv_line, neutralise, unneutralise

TESTS = Path(__file__).resolve().parent
from test_cli_classify import install_fake, make_images

LABELS = "-l red,green,blue"


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def colour_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16 + i % 5, 16), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(
            folder / f"{i:03d}.png"
        )
    return folder


# -- a strict RFC 4180 reader: CR, LF or CRLF end a record unless inside quotes -----------
def strict_rows(text: str) -> list[list[str]]:
    rows: list[list[str]] = []
    row: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j, cell = i + 1, []
            while True:
                if j >= n:
                    raise ValueError("unterminated quote")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        cell.append('"')
                        j += 2
                        continue
                    break
                cell.append(text[j])
                j += 1
            i = j + 1
            value = "".join(cell)
        else:
            j = i
            while j < n and text[j] not in ",\r\n":
                if text[j] == '"':
                    raise ValueError(f"quote inside an unquoted cell at {j}")
                j += 1
            value, i = text[i:j], j
        row.append(value)
        if i >= n:
            rows.append(row)
            break
        if text[i] == ",":
            i += 1
            continue
        if text[i] not in "\r\n":
            raise ValueError(f"garbage after a quoted cell at {i}")
        i += 2 if text.startswith("\r\n", i) else 1
        rows.append(row)
        row = []
    return rows


NASTY = [
    "a\rb.png",
    "c\r\nd.png",
    "e\nf.png",
    'g"h,i.png',
    "=cmd|' -C calc'!A0.png",
    "+1.png",
    "-2.png",
    "@SUM(A1).png",
    "\tj.png",
    "'k.png",
    "''l.png",
    "plain.png",
]


def test_csv_cells_round_trip_through_python_and_a_strict_reader() -> None:
    recs = [
        Record(p, f"lab{i}\r", 0.5, {"x": 0.5}, 1, 2, None if i % 3 else f"{p}: broken\r") for i, p in enumerate(NASTY)
    ]
    buf = io.StringIO()
    RecordWriter("csv", buf, ["x"]).write_batch(recs)
    text = buf.getvalue()
    for rows in (list(csv.reader(io.StringIO(text, newline=""), strict=True)), strict_rows(text)):
        assert len(rows) == 1 + len(recs)
        for rec, row in zip(recs, rows[1:]):
            assert [unneutralise(row[0]), unneutralise(row[1]), unneutralise(row[5])] == [
                rec.path,
                rec.label,
                rec.error or "",
            ]
            assert not row[0].startswith(("=", "+", "-", "@", "\t", "\r"))  # no formula for a spreadsheet


def test_csv_line_matches_the_csv_module_without_lone_cr() -> None:
    import random

    rng = random.Random(0)
    alphabet = ["a", ",", '"', "\n", " ", "é", "", "'", "\t"]
    for _ in range(3000):
        row = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(1, 4))]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        assert csv_line(row) == buf.getvalue()  # earlier outputs stay byte-identical, hence resumable


@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@x", "\tx", "\rx", "'x", "''x", "x=1", ""])
def test_neutralise_is_reversible(text: str) -> None:
    assert unneutralise(neutralise(text)) == text
    assert neutralise(text)[:1] not in ("=", "+", "-", "@", "\t", "\r")


def test_nasty_names_resume_without_redoing_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in NASTY:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / name, format="PNG")
    out = tmp_path / "r.csv"
    args = ["classify", str(folder), "-l", "red,=cmd|x,@green", "-o", str(out)]
    r = invoke(args)
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    rows = strict_rows(data.decode())
    assert len(rows) == 1 + len(NASTY)
    assert rows[0][-2:] == ["score_=cmd|x", "score_@green"]
    assert sorted(os.path.basename(unneutralise(row[0])) for row in rows[1:]) == sorted(NASTY)
    assert {row[0][len(str(folder)) + 1 :][:1] for row in rows[1:]} <= set("acegk+-@'\tp=")  # full path first
    r = invoke(args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert f"{len(NASTY)} processed, 0 failed, {len(NASTY)} already done" in r.stderr
    assert out.read_bytes() == data
    # A relative path that starts with "-" or "=" is neutralised in its cell and still resumes.
    monkeypatch.chdir(folder)
    rel = tmp_path / "rel.csv"
    names = ["-2.png", "=cmd|' -C calc'!A0.png", "@SUM(A1).png"]
    assert invoke(["classify", "-l", "red,green", "-o", str(rel), "--", *names]).exit_code == 0
    cells = [row[0] for row in strict_rows(rel.read_text())[1:]]
    assert cells == ["'" + n for n in names]
    r = invoke(["classify", "-l", "red,green", "-o", str(rel), "--resume", "--", *names])
    assert "3 processed, 0 failed, 3 already done" in r.stderr, r.output


def test_display_paths_escape_terminal_control_characters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "ok\x1b[2Jred.png")
    (folder / "bad\x1b]0;pwned\x07\r.png").write_bytes(b"not an image")
    r = invoke(["classify", str(folder), "-l", "red,gr\x1b[31meen"])
    assert r.exit_code == 1
    for stream in (r.stdout, r.stderr):
        assert "\x1b" not in stream and "\x07" not in stream and "\r" not in stream, stream
    assert "ok\\x1b[2Jred.png" in r.stdout and "bad\\x1b]0;pwned\\x07\\r.png" in r.stderr


# -- the table lines up CJK text by display width -------------------------------------------
def test_table_aligns_by_display_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    imgs = make_images(tmp_path / "imgs")
    r = invoke(["classify", str(imgs["a_red.png"]), str(imgs["c_blue.jpeg"]), "-l", "red 赤い猫,blue"])
    assert r.exit_code == 0, r.output
    from clip_rt.display import display_width

    lines = r.stdout.splitlines()
    size_ends = {display_width(line[: line.index("x") + 3]) for line in lines[1:]}  # "64x48" / "96x54"
    header_end = display_width(lines[0][: lines[0].index("size") + 4])
    assert size_ends == {header_end}, lines


# -- outputs that must survive --------------------------------------------------------------
def first_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "r.jsonl", n: int = 6
) -> tuple[Path, Path, bytes]:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", n)
    out = tmp_path / name
    r = invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return folder, out, out.read_bytes()


def test_sidecar_path_that_is_a_folder_is_refused_before_truncating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, out, before = first_run(tmp_path, monkeypatch)
    side = Path(str(out) + ".clip-rt.json")
    side.unlink()
    side.mkdir()
    r = invoke(["classify", str(folder), "-l", "red,green", "-o", str(out)])
    assert r.exit_code == 1
    assert "run description" in one_error_line(r) and "folder" in r.stderr
    assert out.read_bytes() == before


def test_missing_output_folder_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 2)
    r = invoke(["classify", str(folder), "-l", "red,green", "-o", str(tmp_path / "nope" / "r.jsonl")])
    assert r.exit_code == 1 and "does not exist" in one_error_line(r)


def test_dev_null_output_needs_no_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 3)
    existed = os.path.exists("/dev/null.clip-rt.json")
    for fmt in ("jsonl", "csv", "json", "table"):
        r = invoke(["classify", str(folder), "-l", "red,green", "-o", "/dev/null", "--format", fmt])
        assert r.exit_code == 0, r.output
    assert os.path.exists("/dev/null.clip-rt.json") == existed
    assert not os.path.exists("/dev/.null.clip-rt.lock")
    r = invoke(["classify", str(folder), "-l", "red,green", "-o", "/dev/null", "--format", "jsonl", "--resume"])
    assert r.exit_code == 1 and "character device" in one_error_line(r)


def test_fifo_output_streams_with_no_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 3)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = invoke(["classify", str(folder), "-l", "red,green", "-o", str(fifo)])
    reader.join(20)
    assert r.exit_code == 0, r.output
    assert len(got[0].splitlines()) == 3 and json.loads(got[0].splitlines()[0])["label"]
    assert sorted(os.listdir(tmp_path)) == ["imgs", "pipe.jsonl"]


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "256k") -> Iterator[Path]:
    where.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the ulimit -f test covers it")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def read_only_folder(tmp_path: Path, contents: dict[str, bytes]) -> contextlib.AbstractContextManager[Path]:
    """A folder holding *contents* in which no file can be created: by permissions when not
    root, else a tmpfs remounted read-only (root ignores permissions)."""

    @contextlib.contextmanager
    def make() -> Iterator[Path]:
        if os.geteuid() != 0:
            ro = tmp_path / "ro"
            ro.mkdir()
            for name, data in contents.items():
                (ro / name).write_bytes(data)
            ro.chmod(0o555)
            try:
                yield ro
            finally:
                ro.chmod(0o755)
            return
        with small_tmpfs(tmp_path / "ro") as ro:
            for name, data in contents.items():
                (ro / name).write_bytes(data)
            if subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True).returncode != 0:
                pytest.skip("cannot remount the tmpfs read-only")
            yield ro

    return make()


def test_read_only_folder_is_one_error_line_and_the_output_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, out, before = first_run(tmp_path, monkeypatch)
    side = Path(str(out) + ".clip-rt.json").read_bytes()
    with read_only_folder(tmp_path, {"r.jsonl": before, "r.jsonl.clip-rt.json": side}) as ro:
        for extra in ([], ["--resume"], ["--format", "json"]):
            r = invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(ro / "r.jsonl"), *extra])
            assert r.exit_code == 1, r.output
            line = one_error_line(r)
            assert "r.jsonl" in line and ("Read-only file system" in line or "Permission denied" in line), line
            assert (ro / "r.jsonl").read_bytes() == before
        r = invoke(["classify", str(folder), "-l", "red,green", "--report", str(ro / "rep")])
        assert r.exit_code == 1 and "rep" in one_error_line(r)


def gated_cmd(args: list[str], gate: Path, after: int) -> list[str]:
    """The CLI with the fake model in a subprocess that stops before image *after* until the
    file *gate* exists (at most 60 s): the run is surely half-way while the test acts."""
    code = (
        f"import os, sys, time; sys.path.insert(0, {str(TESTS)!r}); import test_cli_classify as t\n"
        "real = t.FakeModel.iter_images\n"
        "def gated(self, sources, batch_size=32):\n"
        "    for i, item in enumerate(real(self, sources, batch_size)):\n"
        f"        if i == {after}:\n"
        "            end = time.time() + 60\n"
        f"            while not os.path.exists({str(gate)!r}) and time.time() < end:\n"
        "                time.sleep(0.02)\n"
        "        yield item\n"
        "t.FakeModel.iter_images = gated\n"
        "t.run_cli_with_fake(0)\n"
    )
    return [sys.executable, "-c", code, *args]


def wait_for_lines(path: Path, n: int, also: Path | None = None) -> None:
    """Until *path* has *n* lines (and *also* exists), at most 60 s."""
    deadline = time.time() + 60
    while time.time() < deadline and not (
        (also is None or also.exists()) and path.exists() and path.read_bytes().count(b"\n") >= n
    ):
        time.sleep(0.02)


def limited_run(args: list[str], limit: int) -> subprocess.CompletedProcess[bytes]:
    """The CLI with the fake model in a process whose files cannot grow past *limit* bytes
    (``ulimit -f``; SIGXFSZ ignored, so a write past it fails with EFBIG as on a full disk)."""
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.path.insert(0, {str(TESTS)!r}); "
        "import test_cli_classify as t; t.run_cli_with_fake(0)"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120, env=env)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_full_disk_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    folder, out, before = first_run(tmp_path, monkeypatch, name=f"r.{fmt}", n=30)
    side = Path(str(out) + ".clip-rt.json")
    side_before = side.read_bytes()
    p = limited_run(
        ["classify", str(folder), "-l", "red,green,cyan", "-o", str(out), "--batch-size", "2"], limit=len(before) // 3
    )
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: cannot write") and "File too large" in err[0], err
    assert out.read_bytes() == before and side.read_bytes() == side_before
    assert sorted(os.listdir(tmp_path)) == sorted(["imgs", out.name, side.name])  # no lock file left


def test_full_disk_on_a_new_output_keeps_whole_records_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 30)
    ref = tmp_path / "ref.jsonl"
    assert invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(ref)]).exit_code == 0
    out = tmp_path / "r.jsonl"
    args = ["classify", str(folder), "-l", "red,green,blue", "-o", str(out), "--batch-size", "2"]
    p = limited_run(args, limit=len(ref.read_bytes()) // 3)
    assert p.returncode == 1 and "continue with --resume" in p.stderr.decode(), p.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n") and 0 < data.count(b"\n") < 30
    [json.loads(line) for line in data.splitlines()]  # whole records only
    r = invoke(args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == ref.read_bytes()


def test_full_tmpfs_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 60)
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "r.jsonl"
        assert invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out)]).exit_code == 0
        before = out.read_bytes()
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk, then free less than a new output needs
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        os.truncate(disk / "filler", os.path.getsize(disk / "filler") - 4096)
        r = invoke(["classify", str(folder), "-l", "red,green,cyan", "-o", str(out)])
        assert r.exit_code == 1
        assert "No space left on device" in one_error_line(r) and "put back" in r.stderr
        assert out.read_bytes() == before


def test_killed_replacing_run_keeps_the_earlier_output_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that replaces an earlier output streams into the real path (resumable) and keeps the
    earlier output as .<name>.previous until it ends; a completed run removes it."""
    folder, out, before = first_run(tmp_path, monkeypatch, n=40)
    args = ["classify", str(folder), "-l", "red,green,cyan", "-o", str(out), "--batch-size", "2"]
    proc = subprocess.Popen(
        gated_cmd(args, tmp_path / "never", after=8), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    previous = tmp_path / ".r.jsonl.previous"
    wait_for_lines(out, 8, also=previous)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert previous.read_bytes() == before
    assert out.read_bytes().count(b"\n") == 8
    r = invoke(["classify", str(folder), "-l", "red,green,cyan", "-o", str(out), "--resume"])
    assert r.exit_code == 0 and "already done" in r.stderr, r.output
    assert not previous.exists() and len(out.read_bytes().splitlines()) == 40


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, out, before = first_run(tmp_path, monkeypatch)
    with OutputLock(str(out)):
        for extra in ([], ["--resume"]):
            r = invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out), *extra])
            assert r.exit_code == 1
            assert "being written by another clip-rt run" in one_error_line(r) and f"process {os.getpid()}" in r.stderr
            assert out.read_bytes() == before
    assert invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out), "--resume"]).exit_code == 0


def test_no_lock_file_is_left_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, out, _ = first_run(tmp_path, monkeypatch)
    lock = tmp_path / f".{out.name}.clip-rt.lock"
    assert not lock.exists()
    lock.write_text("4242\n")  # left by a run that was killed: nobody holds it
    r = invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["imgs", out.name, f"{out.name}.clip-rt.json"])


def test_lock_file_removed_under_a_waiting_opener_is_not_locked_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that opened the lock file just before its holder removed it must not take a lock on
    # the removed file while a third run locks a new one: it checks the name and retries.
    out = str(tmp_path / "r.jsonl")
    first = OutputLock(out).acquire()
    stale = os.open(first.lock_path, os.O_RDWR)
    first.release()
    assert not os.path.exists(first.lock_path)
    second = OutputLock(out)
    opened = [stale]
    real_open = second._open
    monkeypatch.setattr(second, "_open", lambda: opened.pop() if opened else real_open())
    second.acquire()
    try:
        assert os.path.exists(second.lock_path)
        with pytest.raises(InputError, match="being written by another clip-rt run"):
            OutputLock(out).acquire()
    finally:
        second.release()
    assert not os.path.exists(second.lock_path)


def test_two_resume_runs_at_once_never_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(monkeypatch)
    folder = colour_folder(tmp_path / "imgs", 24)
    out = tmp_path / "r.jsonl"
    args = ["classify", str(folder), "-l", "red,green", "-o", str(out), "--resume", "--batch-size", "2"]
    gate = tmp_path / "gate"
    first = subprocess.Popen(gated_cmd(args, gate, after=4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_lines(out, 4)
    second = subprocess.run(gated_cmd(args, gate, after=4), capture_output=True, timeout=120)
    gate.touch()
    first.wait(120)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    assert second.returncode == 1 and b"being written by another clip-rt run" in second.stderr
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == 24 and len(set(paths)) == 24


def test_stale_temporary_files_are_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, out, _ = first_run(tmp_path, monkeypatch, name="r.json")
    stale = tmp_path / ".r.json.99999.deadbeef.tmp"
    stale.write_text("[half")
    r = invoke(["classify", str(folder), "-l", "red,green,blue", "-o", str(out)])
    assert r.exit_code == 0 and not stale.exists()
    assert len(json.loads(out.read_text())) == 6


@pytest.mark.parametrize("name", ["r.jsonl", "r.json"])
def test_output_keeps_its_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    folder, out, _ = first_run(tmp_path, monkeypatch, name=name)
    out.chmod(0o640)
    assert invoke(["classify", str(folder), "-l", "red,green", "-o", str(out)]).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o640


def test_stdout_on_a_full_device_is_one_error_line(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    folder = colour_folder(tmp_path / "imgs", 2)
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_cli_classify as t; t.run_cli_with_fake(0)"
    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            [sys.executable, "-c", code, "classify", str(folder), "-l", "red,green"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    err = p.stderr.decode()
    assert p.returncode == 1 and err.startswith("Error: cannot write to standard output: No space left"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["r.jsonl", "r.json"])
def test_symlinked_output_is_written_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    folder, out, _ = first_run(tmp_path, monkeypatch, name=name)
    link = tmp_path / f"link-{name}"
    link.symlink_to(out)
    assert invoke(["classify", str(folder), "-l", "red,cyan", "-o", str(link)]).exit_code == 0
    assert link.is_symlink() and '"cyan"' in out.read_text()
