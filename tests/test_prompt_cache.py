"""The persistent prompt cache: concurrency, corruption, crashes, the in-memory layer."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from clip_rt.bundle.store import cache_dir
from clip_rt.engine import prompt_cache as pc
from clip_rt.engine.prompt_cache import PromptCache

DIM = 16


def vec(text: str) -> np.ndarray:
    """A deterministic vector per text, so any process can say what the right value is."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pc, "_warned_paths", set())


def run_py(code: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ), **popen)  # type: ignore[call-overload]


def test_roundtrip_and_persistence() -> None:
    texts = ["a photo of a cat.", "a photo of a dog.", "ünïcödé ✓", ""]
    with PromptCache("fp", "fp32", dim=DIM) as c:
        assert c.get_many(texts) == {}
        c.put_many({t: vec(t) for t in texts})
    assert (cache_dir() / "prompts.sqlite").is_file()
    fresh = PromptCache("fp", "fp32", dim=DIM)
    got = fresh.get_many(texts + ["missing"])
    assert set(got) == set(texts)
    for t in texts:
        np.testing.assert_array_equal(got[t], vec(t))
        assert got[t].dtype == np.float32


def test_keys_are_separated_by_fingerprint_and_precision() -> None:
    PromptCache("fpA", "fp32", dim=DIM).put_many({"x": vec("A32")})
    PromptCache("fpA", "fp16", dim=DIM).put_many({"x": vec("A16")})
    PromptCache("fpB", "fp32", dim=DIM).put_many({"x": vec("B32")})
    np.testing.assert_array_equal(PromptCache("fpA", "fp32").get_many(["x"])["x"], vec("A32"))
    np.testing.assert_array_equal(PromptCache("fpA", "fp16").get_many(["x"])["x"], vec("A16"))
    np.testing.assert_array_equal(PromptCache("fpB", "fp32").get_many(["x"])["x"], vec("B32"))
    assert PromptCache("fpB", "int8").get_many(["x"]) == {}


def test_first_writer_wins_and_dim_is_checked() -> None:
    c = PromptCache("fp", "fp32", dim=DIM)
    c.put_many({"t": vec("first")})
    PromptCache("fp", "fp32", dim=DIM).put_many({"t": vec("second")})  # INSERT OR IGNORE
    np.testing.assert_array_equal(PromptCache("fp", "fp32", dim=DIM).get_many(["t"])["t"], vec("first"))
    with pytest.raises(ValueError, match="expected 16"):
        c.put_many({"bad": np.zeros(3, np.float32)})
    # A row of another size (another model's dim) is a miss, not a crash.
    assert PromptCache("fp", "fp32", dim=DIM + 1).get_many(["t"]) == {}


def test_memory_layer_answers_without_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    c = PromptCache("fp", "fp32", dim=DIM, memory_entries=2)
    c.put_many({t: vec(t) for t in ["a", "b", "c"]})  # "a" falls out of the LRU

    def no_db(*args: object) -> None:
        raise AssertionError("went to SQLite")

    monkeypatch.setattr(c, "_select", no_db)
    got = c.get_many(["b", "c"])
    np.testing.assert_array_equal(got["c"], vec("c"))
    with pytest.raises(AssertionError, match="went to SQLite"):
        c.get_many(["a"])


def test_memory_only_mode_writes_nothing() -> None:
    c = PromptCache("fp", "fp32", dim=DIM, persistent=False)
    c.put_many({"a": vec("a")})
    np.testing.assert_array_equal(c.get_many(["a"])["a"], vec("a"))
    assert not (cache_dir() / "prompts.sqlite").exists()


def test_many_keys_beyond_the_sql_variable_chunk() -> None:
    texts = [f"prompt {i}" for i in range(1234)]
    PromptCache("fp", "fp32", dim=DIM).put_many({t: vec(t) for t in texts})
    got = PromptCache("fp", "fp32", dim=DIM).get_many(texts)
    assert len(got) == 1234
    np.testing.assert_array_equal(got["prompt 777"], vec("prompt 777"))


WRITER = """
import hashlib, sys
import numpy as np
from clip_rt.engine.prompt_cache import PromptCache
sys.path.insert(0, {tests!r})
from test_prompt_cache import vec
worker = int(sys.argv[1]) if len(sys.argv) > 1 else {worker}
shared = [f"shared {{i}}" for i in range(60)]
own = [f"worker {{worker}} item {{i}}" for i in range(60)]
for round_ in range(30):  # many short transactions, interleaved with reads
    c = PromptCache("fp", "fp32", dim={dim})
    batch = shared[2 * round_:2 * round_ + 4] + own[2 * round_:2 * round_ + 2]
    c.put_many({{t: vec(t) for t in batch}})
    got = c.get_many(batch)
    assert set(got) == set(batch), sorted(set(batch) - set(got))
    c.close()
"""


def test_four_concurrent_writer_processes_lose_nothing() -> None:
    tests_dir = str(Path(__file__).parent)
    procs = [run_py(WRITER.format(tests=tests_dir, worker=w, dim=DIM), stderr=subprocess.PIPE) for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        assert b"Warning" not in err, err.decode()  # no "busy" degradation either
    expected = [f"shared {i}" for i in range(60)] + [f"worker {w} item {i}" for w in range(4) for i in range(60)]
    got = PromptCache("fp", "fp32", dim=DIM).get_many(expected)
    assert sorted(set(expected) - set(got)) == []
    for t in expected:
        np.testing.assert_array_equal(got[t], vec(t))
    with sqlite3.connect(cache_dir() / "prompts.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM text_embeddings").fetchone()[0] == len(expected)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_is_moved_aside_and_rebuilt(damage: str) -> None:
    path = cache_dir() / "prompts.sqlite"
    texts = [f"text {i}" for i in range(400)]
    if damage == "garbage":
        path.parent.mkdir(parents=True)
        path.write_bytes(os.urandom(8192))
    else:
        c = PromptCache("fp", "fp32", dim=DIM)
        c.put_many({t: vec(t) for t in texts})
        c.close()  # last connection: the WAL is checkpointed into the main file
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(size // 3)
            f.write(os.urandom(4096))  # a torn page in the middle ...
            f.truncate(size // 2)  # ... and the tail gone
    c = PromptCache("fp", "fp32", dim=DIM)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        got = c.get_many(texts)
        c.put_many({t: vec(t) for t in texts if t not in got})
    aside = [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert aside, "the corrupt file should be kept for inspection"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = PromptCache("fp", "fp32", dim=DIM).get_many(texts)
    assert set(again) == set(texts)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


KILLED_WRITER = """
import sys, time
import numpy as np
from clip_rt.engine.prompt_cache import PromptCache
c = PromptCache("fp", "fp32", dim={dim})
c.put_many({{"committed": np.ones({dim}, np.float32)}})
conn = c._connect()
conn.execute("BEGIN IMMEDIATE")
conn.executemany("INSERT INTO text_embeddings VALUES ('fp', 'fp32', ?, {dim}, ?)",
                 [(f"uncommitted {{i}}", np.zeros({dim}, np.float32).tobytes()) for i in range(5000)])
print("holding the write lock", flush=True)
time.sleep(60)
"""


def test_writer_killed_mid_transaction_leaves_cache_usable() -> None:
    proc = run_py(KILLED_WRITER.format(dim=DIM), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert b"holding" in line, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no corruption or busy warning
        c = PromptCache("fp", "fp32", dim=DIM)
        got = c.get_many(["committed", "uncommitted 1"])
        assert list(got) == ["committed"]
        c.put_many({"after the crash": vec("x")})  # the dead process's lock is gone
    assert "after the crash" in PromptCache("fp", "fp32", dim=DIM).get_many(["after the crash"])


LOOPING_WRITER = """
import numpy as np
from clip_rt.engine.prompt_cache import PromptCache
i = 0
while True:
    c = PromptCache("fp", "fp32", dim={dim})
    c.put_many({{f"loop {{i}} {{j}}": np.full({dim}, i, np.float32) for j in range(50)}})
    c.close()
    i += 1
    if i == 3:
        print("writing", flush=True)
"""


def test_writer_killed_at_a_random_moment_leaves_cache_consistent() -> None:
    proc = run_py(LOOPING_WRITER.format(dim=DIM), stdout=subprocess.PIPE)
    assert proc.stdout is not None and b"writing" in proc.stdout.readline()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with sqlite3.connect(cache_dir() / "prompts.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT COUNT(*) FROM text_embeddings").fetchone()[0]
    assert rows >= 150 and rows % 50 == 0  # whole transactions only
    c = PromptCache("fp", "fp32", dim=DIM)
    c.put_many({"fine": vec("fine")})
    assert "fine" in PromptCache("fp", "fp32", dim=DIM).get_many(["fine"])


def test_unwritable_store_warns_once_and_works_in_memory(clip_home: Path) -> None:
    (clip_home / "cache").write_text("a file where the cache directory should be")
    c = PromptCache("fp", "fp32", dim=DIM)
    with pytest.warns(RuntimeWarning, match="in memory only"):
        assert c.get_many(["a"]) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per path: later caches stay quiet
        c.put_many({"a": vec("a")})
        np.testing.assert_array_equal(c.get_many(["a"])["a"], vec("a"))
        other = PromptCache("fp", "fp32", dim=DIM)
        other.put_many({"b": vec("b")})
        assert other.get_many(["a"]) == {}  # nothing was persisted
    assert not c.persistent


def test_read_only_database_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    PromptCache("fp", "fp32", dim=DIM).put_many({"old": vec("old")})
    real_connect = PromptCache._connect

    def read_only(self: PromptCache) -> sqlite3.Connection:
        conn = real_connect(self)
        conn.execute("PRAGMA query_only = ON")  # every write fails with SQLITE_READONLY
        return conn

    monkeypatch.setattr(PromptCache, "_connect", read_only)
    c = PromptCache("fp", "fp32", dim=DIM)
    with pytest.warns(RuntimeWarning, match="not writable"):
        c.put_many({"new": vec("new")})
    got = c.get_many(["old", "new"])
    assert set(got) == {"old", "new"}  # old from disk, new from memory
    assert not c.writable and c.persistent
    monkeypatch.undo()
    assert PromptCache("fp", "fp32", dim=DIM).get_many(["new"]) == {}


def test_table_of_another_layout_is_moved_aside_and_rebuilt() -> None:
    """A prompts.sqlite from another tool/version (other columns) must not break encode_text."""
    path = cache_dir() / "prompts.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE text_embeddings (id INTEGER PRIMARY KEY, model TEXT, prompt TEXT, vec BLOB)")
        conn.execute("INSERT INTO text_embeddings (model, prompt, vec) VALUES ('m', 'p', x'00')")
    conn.close()
    c = PromptCache("fp", "fp32", dim=DIM)
    with pytest.warns(RuntimeWarning, match="columns id, model, prompt, vec.*moved it to"):
        assert c.get_many(["a"]) == {}
    c.put_many({"a": vec("a")})
    c.close()
    assert [p.name for p in path.parent.iterdir() if ".old-schema-" in p.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(PromptCache("fp", "fp32", dim=DIM).get_many(["a"])["a"], vec("a"))
    assert _user_version(path) == pc.SCHEMA_VERSION


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_unversioned_file_of_this_layout_is_kept_and_stamped() -> None:
    path = cache_dir() / "prompts.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:  # a cache written before the schema was versioned
        conn.execute(pc._SCHEMA)
        conn.execute("INSERT INTO text_embeddings VALUES ('fp', 'fp32', 'old', ?, ?)", (DIM, vec("old").tobytes()))
    conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(PromptCache("fp", "fp32", dim=DIM).get_many(["old"])["old"], vec("old"))
    assert _user_version(path) == pc.SCHEMA_VERSION


def test_file_of_a_newer_schema_is_left_alone() -> None:
    path = cache_dir() / "prompts.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE text_embeddings (key TEXT PRIMARY KEY, embedding BLOB)")
        conn.execute(f"PRAGMA user_version = {pc.SCHEMA_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    c = PromptCache("fp", "fp32", dim=DIM)
    with pytest.warns(RuntimeWarning, match="newer clip-rt.*in memory only"):
        assert c.get_many(["a"]) == {}
    c.put_many({"a": vec("a")})
    np.testing.assert_array_equal(c.get_many(["a"])["a"], vec("a"))
    assert not c.persistent and path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["prompts.sqlite"]


def test_unexpected_sqlite_error_disables_persistence_never_raises() -> None:
    path = cache_dir() / "prompts.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:  # right columns and version, but a view: every INSERT fails
        conn.execute("CREATE TABLE t (fingerprint, precision, text, dim, embedding)")
        conn.execute("CREATE VIEW text_embeddings AS SELECT * FROM t")
        conn.execute(f"PRAGMA user_version = {pc.SCHEMA_VERSION}")
    conn.close()
    c = PromptCache("fp", "fp32", dim=DIM)
    assert c.get_many(["a"]) == {}
    with pytest.warns(RuntimeWarning, match="cannot be used.*in memory only"):
        c.put_many({"a": vec("a")})
    assert not c.persistent
    np.testing.assert_array_equal(c.get_many(["a"])["a"], vec("a"))
