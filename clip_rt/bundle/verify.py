"""Checksum verification of bundle files, remembered across processes.

Hashing a 350 MB graph takes about a second; a successful check is remembered in
``$CLIP_RT_HOME/cache/verified.json`` by (path, size, mtime_ns, sha256), so later loads of an
unchanged file skip it. A changed file (size or mtime) is hashed again.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

from . import store
from .manifest import Manifest, verify_files

VERIFIED_FILE = "verified.json"  # in store.cache_dir(): {path: [size, mtime_ns, sha256]}


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged memo: files are simply hashed again
    return data if isinstance(data, dict) else {}


def verify_bundle_files(bundle_dir: Path, manifest: Manifest, names: Sequence[str]) -> None:
    """:func:`manifest.verify_files` for *names*, skipping files whose (size, mtime_ns) were
    verified against the same sha256 before."""
    memo_path = store.cache_dir() / VERIFIED_FILE
    memo = _read_memo(memo_path)
    verified = []
    for name in names:
        path = (bundle_dir / name).resolve()
        entry = manifest.files.get(name)
        try:
            st = path.stat()
        except OSError:
            st = None
        key = [st.st_size, st.st_mtime_ns, entry.sha256] if st is not None and entry is not None else None
        if key is not None and memo.get(str(path)) == key:
            continue
        verify_files(bundle_dir, manifest, [name])  # raises BundleError / ChecksumError
        if key is not None:
            verified.append((str(path), key))
    if not verified:
        return
    memo = _read_memo(memo_path)  # re-read: another process may have added entries meanwhile
    memo.update(dict(verified))
    tmp = memo_path.with_name(f"{VERIFIED_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, memo_path)
    except OSError:
        pass  # an unwritable store only costs hashing again next time
