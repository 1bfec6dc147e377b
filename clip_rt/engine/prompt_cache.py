"""Persistent + in-memory cache of text embeddings.

One SQLite file, ``store.cache_dir() / "prompts.sqlite"``, shared by every bundle and every
process: rows are keyed by (fingerprint, precision, text key) and hold a float32 blob. The
fingerprint covers the bundle's files and its text settings (``Manifest.text_fingerprint``); the
text key is the exact text up to KEY_CHARS characters, else ``sha256:`` and the hash of its
UTF-8 bytes (surrogates passed through), so a huge text is never stored or compared whole.
WAL mode lets readers run beside a writer; writes are short ``INSERT OR IGNORE`` transactions
(two processes computing the same prompt store the same vector, the first one wins).

The cache never breaks inference: a corrupt file is moved aside and rebuilt (with a warning),
and a store that cannot be written is used read-only or not at all (warned once per path).

Both layers are bounded, because texts may come from strangers (``clip-rt serve``): the memory
layer is an LRU of ``memory_entries`` vectors, and the file holds at most about ``max_rows``
rows per bundle and precision (``CLIP_RT_PROMPT_CACHE_MAX_ROWS``, default 200,000: about
0.5 GB for 512-dimensional embeddings); past that, new texts are kept in memory only (warned
once). The count is read once per process and followed from its own inserts, so several
processes writing at once may pass it by what they add meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np

from ..bundle import store

_T = TypeVar("_T")
CACHE_FILE = "prompts.sqlite"
BUSY_TIMEOUT_MS = 10_000
_SQL_VARS = 500  # per IN (...) query; far below SQLite's limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS text_embeddings (
    fingerprint TEXT NOT NULL,
    precision   TEXT NOT NULL,
    text        TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    embedding   BLOB NOT NULL,
    PRIMARY KEY (fingerprint, precision, text)
) WITHOUT ROWID
"""
# Recorded in ``PRAGMA user_version``; a file of another (older, unknown) layout is moved aside
# and rebuilt, one written by a newer clip-rt is left alone (persistence off in this process).
SCHEMA_VERSION = 1
_COLUMNS = ("fingerprint", "precision", "text", "dim", "embedding")
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_UNWRITABLE = {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL"}
_warned_paths: set[str] = set()  # "warn once" is per process and cache file
KEY_CHARS = 256  # longer texts are keyed by their hash (a key never equals another text: see text_key)
MAX_ROWS_ENV = "CLIP_RT_PROMPT_CACHE_MAX_ROWS"
DEFAULT_MAX_ROWS = 200_000


def max_rows_from_env() -> int:
    raw = os.environ.get(MAX_ROWS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ROWS
    if not raw.isdigit():
        warnings.warn(
            f"{MAX_ROWS_ENV} must be a whole number of rows, got {raw!r}; using {DEFAULT_MAX_ROWS}",
            RuntimeWarning,
            stacklevel=3,
        )
        return DEFAULT_MAX_ROWS
    return int(raw)


def text_key(text: str) -> str:
    """The cache key of *text*: itself when short and encodable, else ``sha256:<hex>``. A short
    text that looks like a hash key is still itself (shorter than any text that is hashed), and
    a text that SQLite cannot take (lone surrogates) is hashed, so a key never fails to bind."""
    if len(text) <= KEY_CHARS:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _SchemaMismatch(sqlite3.DatabaseError):
    """The file holds a ``text_embeddings`` table of another layout, or another schema version."""

    def __init__(self, message: str, *, newer: bool) -> None:
        super().__init__(message)
        self.newer = newer


def default_path() -> Path:
    return store.cache_dir() / CACHE_FILE


def _errorname(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    if name:
        return "_".join(str(name).split("_")[:2])  # SQLITE_IOERR_SHORT_READ -> SQLITE_IOERR
    msg = str(exc).lower()
    if "not a database" in msg:
        return "SQLITE_NOTADB"
    if "malformed" in msg:
        return "SQLITE_CORRUPT"
    if "readonly" in msg or "read-only" in msg:
        return "SQLITE_READONLY"
    if "unable to open" in msg:
        return "SQLITE_CANTOPEN"
    return "SQLITE_ERROR"


def _warn_once(path: Path, message: str) -> None:
    key = f"{path}:{message[:40]}"
    if key not in _warned_paths:
        _warned_paths.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class PromptCache:
    """Text embeddings of one bundle at one precision.

    ``get_many`` returns the hits only; ``put_many`` stores new vectors. The in-memory layer
    (an LRU of *memory_entries* vectors) answers repeated prompts without touching SQLite.
    """

    def __init__(
        self,
        fingerprint: str,
        precision: str,
        *,
        dim: Optional[int] = None,
        path: Optional[Path] = None,
        persistent: bool = True,
        memory_entries: int = 20_000,
        max_rows: Optional[int] = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.precision = precision
        self.dim = dim
        self.path = Path(path) if path is not None else default_path()
        self.persistent = persistent
        self.writable = persistent
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_entries = max(0, int(memory_entries))
        self._lock = threading.RLock()
        self._conn: Optional[sqlite3.Connection] = None
        self._conn_pid = -1
        self._inode: Optional[int] = None  # of the file the connection opened
        self.max_rows = max_rows_from_env() if max_rows is None else max(0, int(max_rows))
        self._rows: Optional[int] = None  # this bundle's rows in the file (counted on the first write)

    # -- public API -----------------------------------------------------------
    def get_many(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        keys = {text: text_key(text) for text in texts}  # text -> key, in order, unique texts
        with self._lock:
            found: dict[str, np.ndarray] = {}
            missing: list[str] = []
            for text, key in keys.items():
                vec = self._memory.get(key)
                if vec is None:
                    missing.append(key)
                else:
                    self._memory.move_to_end(key)
                    found[text] = vec
            if missing and self.persistent:
                empty: dict[str, np.ndarray] = {}
                from_disk = self._with_db(lambda conn: self._select(conn, list(dict.fromkeys(missing))), default=empty)
                for key, vec in from_disk.items():
                    self._remember(key, vec)
                found.update((text, from_disk[key]) for text, key in keys.items() if key in from_disk)
            return found

    def put_many(self, embeddings: Mapping[str, np.ndarray]) -> None:
        rows = []
        with self._lock:
            for text, vec in embeddings.items():
                arr = np.ascontiguousarray(vec, dtype=np.float32).reshape(-1)
                if self.dim is not None and arr.size != self.dim:
                    raise ValueError(f"embedding for {text[:60]!r} has {arr.size} values, expected {self.dim}")
                arr.setflags(write=False)
                key = text_key(text)
                self._remember(key, arr)
                rows.append((self.fingerprint, self.precision, key, int(arr.size), arr.tobytes()))
            if rows and self.writable:
                self._with_db(lambda conn: self._insert(conn, rows), default=None, write=True)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._rows = None  # counted again on the next write (the file may be replaced meanwhile)

    def __enter__(self) -> PromptCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------
    def _remember(self, key: str, vec: np.ndarray) -> None:
        if self._memory_entries == 0:
            return
        self._memory[key] = vec
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)

    def _select(self, conn: sqlite3.Connection, keys: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _SQL_VARS):
            chunk = keys[start : start + _SQL_VARS]
            marks = ",".join("?" * len(chunk))
            cur = conn.execute(
                f"SELECT text, dim, embedding FROM text_embeddings "
                f"WHERE fingerprint = ? AND precision = ? AND text IN ({marks})",
                (self.fingerprint, self.precision, *chunk),
            )
            for text, dim, blob in cur:
                # A row whose size disagrees with its dim (or the model's), or of the wrong types
                # (SQLite does not enforce column types), is treated as a miss.
                if (
                    not isinstance(blob, bytes)
                    or type(dim) is not int
                    or len(blob) != 4 * dim
                    or (self.dim is not None and dim != self.dim)
                ):
                    continue
                vec = np.frombuffer(blob, dtype=np.float32)
                out[text] = vec
        return out

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str, int, bytes]]) -> None:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so the
        # transaction never has to be retried half-way; it only lasts for the inserts.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._rows is None:
                self._rows = int(
                    conn.execute(
                        "SELECT COUNT(*) FROM text_embeddings WHERE fingerprint = ? AND precision = ?",
                        (self.fingerprint, self.precision),
                    ).fetchone()[0]
                )
            room = max(0, self.max_rows - self._rows)
            dropped = len(rows) > room
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO text_embeddings (fingerprint, precision, text, dim, embedding) "
                "VALUES (?, ?, ?, ?, ?)",
                rows[:room],
            )
            self._rows += conn.total_changes - before
            if dropped:
                _warn_once(
                    self.path,
                    f"prompt cache {self.path} is full for this model ({self._rows} texts, its "
                    f"limit is {MAX_ROWS_ENV}={self.max_rows}); new texts are kept in memory only",
                )
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error below says what went wrong
            raise
        conn.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid == os.getpid():
            return self._conn
        # A connection inherited through fork() must not be used by the child.
        self._conn = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            self._inode = None
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = _check_not_newer(conn)  # before WAL mode, which rewrites the file header
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable against crashes of the process
            _open_schema(conn, version)
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        return conn

    def _with_db(self, op: Callable[[sqlite3.Connection], _T], *, default: _T, write: bool = False) -> _T:
        """Run *op* on the connection; on corruption rebuild once, on an unwritable store
        degrade (read-only, then memory-only) with a warning, never raise."""
        for attempt in (1, 2):
            try:
                return op(self._connect())
            except OSError as exc:  # the cache directory cannot be created
                self._disable(f"cannot create the prompt cache directory {self.path.parent} ({exc})")
                return default
            except _SchemaMismatch as exc:
                if exc.newer or attempt == 2:
                    self._disable(f"prompt cache {self.path} {exc}")
                    return default
                self._quarantine(f"has {exc}", label="old-schema")
                continue
            except sqlite3.Error as exc:
                kind = _errorname(exc)
                if kind in _CORRUPT and attempt == 1:
                    self._quarantine(f"was corrupt ({exc})", label="corrupt")
                    continue
                if kind == "SQLITE_BUSY" or "locked" in str(exc).lower():
                    # Another process held the lock past busy_timeout: skip this write/read.
                    _warn_once(self.path, f"prompt cache {self.path} is busy ({exc}); continuing without it for now")
                    return default
                if write and kind in _UNWRITABLE:
                    self.writable = False
                    _warn_once(
                        self.path,
                        f"prompt cache {self.path} is not writable ({exc}); "
                        "new text embeddings are kept in memory only",
                    )
                    return default
                # Corrupt again after a rebuild, unusable, or an error nobody foresaw: the
                # cache must never break inference, so stop using the file.
                self._disable(f"prompt cache {self.path} cannot be used ({kind}: {exc})")
                return default
        return default

    def _disable(self, why: str) -> None:
        self.close()
        self.persistent = self.writable = False
        _warn_once(self.path, f"{why}; text embeddings are kept in memory only")

    def _quarantine(self, what: str, *, label: str) -> None:
        """Move a corrupt or foreign cache file (and its WAL files) aside so the next connect
        rebuilds it; *what* completes "prompt cache PATH ..." in the warning."""
        self.close()
        try:
            if self._inode is not None and os.stat(self.path).st_ino != self._inode:
                return  # another process has already replaced the corrupt file with a new one
        except FileNotFoundError:
            return  # moved aside by another process; the next connect creates a new one
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.{label}-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            try:
                os.replace(src, Path(str(aside) + suffix))
            except FileNotFoundError:
                pass  # another process moved it already, or there was no WAL
        warnings.warn(
            f"prompt cache {self.path} {what}; moved it to {aside.name} and started a new one",
            RuntimeWarning,
            stacklevel=4,
        )


def _check_not_newer(conn: sqlite3.Connection) -> int:
    """The file's schema version; _SchemaMismatch(newer=True) if a newer clip-rt wrote it, so
    that this one changes nothing in it."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise _SchemaMismatch(
            f"has schema version {version}, this clip-rt uses {SCHEMA_VERSION} (written by a newer clip-rt?)",
            newer=True,
        )
    return version


def _open_schema(conn: sqlite3.Connection, version: int) -> None:
    """Create the table if needed; raise _SchemaMismatch unless the file is ours, of this
    SCHEMA_VERSION. Stamps the version on a file that has the right table but no version yet
    (new, or from before versioning)."""
    conn.execute(_SCHEMA)
    columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(text_embeddings)"))
    if version not in (0, SCHEMA_VERSION) or sorted(columns) != sorted(_COLUMNS):
        raise _SchemaMismatch(
            f"schema version {version} with columns {', '.join(columns) or 'none'} "
            f"(expected version {SCHEMA_VERSION} with {', '.join(_COLUMNS)})",
            newer=False,
        )
    if version == 0:
        try:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            if _errorname(exc) not in _UNWRITABLE:
                raise  # a read-only file stays readable unstamped; anything else is handled by _with_db
