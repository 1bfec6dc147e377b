"""Checksum verification of bundle files, remembered across processes.

Hashing a 350 MB graph takes about a second; a successful check is remembered in
``$CLIP_RT_HOME/cache/verified.json`` by (resolved path, size, mtime_ns, ctime_ns, inode,
sha256), so later loads of an unchanged file skip it. A file whose size, times or inode changed
is hashed again.

What the memo trusts (docs/reliability.md, "Bundles are untrusted input"): that a file with the
same path, size, inode, mtime and ctime still has the content that was hashed. Rewriting a file
changes its mtime and ctime; ``touch -r`` can put the mtime back but not the ctime, which only
the kernel sets, and replacing the file changes the inode. It does not catch damage that leaves
every stat field alone (bit rot on the disk, a raw write to the block device): ``clip-rt info
--verify`` always hashes. The checksums themselves come from the bundle's own manifest: they
detect damage and partial copies, not a bundle made hostile on purpose (its author writes
matching checksums); that is what the schema, confinement and session checks are for.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import store
from .manifest import Manifest, verify_files

VERIFIED_FILE = "verified.json"  # in store.cache_dir(): {path: [size, mtime_ns, ctime_ns, inode, sha256]}


def _read_memo(path: Path) -> dict[str, Any]:
    from ..errors import ClipRtError
    from ..inputs.bounded import read_limited

    try:  # a regular file of at most 64 MB (not a FIFO or device put there)
        data = json.loads(read_limited(path, what=str(path), limit=64 << 20).decode("utf-8"))
    except (OSError, ValueError, ClipRtError):
        return {}  # missing or damaged memo: files are simply hashed again
    return data if isinstance(data, dict) else {}


def verify_bundle_files(bundle_dir: Path, manifest: Manifest, names: Sequence[str]) -> None:
    """:func:`manifest.verify_files` for *names*, skipping files whose (size, mtime_ns, ctime_ns,
    inode) were verified against the same sha256 before."""
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
        key = (
            [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, entry.sha256]
            if st is not None and entry is not None
            else None
        )
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
