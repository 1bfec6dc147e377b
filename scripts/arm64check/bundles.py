"""The bundles the device loads, exported on the host (ONNX is architecture-independent).

Per model, two exports with random weights (``--pretrained none --seed N``; real weights do not
change sizes, memory or kernels):

- ``full``: fp32 + int8, for the embedding comparison (fp32 is the exact reference);
- ``slim``: ``--precision int8 --no-fp32``, what a device ships and what classify/RSS use.

They are cached under a key made from the export code (``export/``), the manifest module and the
model/seed, so a change to the export (say, static int8) re-exports and an unchanged checkout
does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

# The checkout's own CLI, whatever interpreter runs this script (it must have the [export] extra).
CLI = [sys.executable, "-c", "import sys; from clip_rt.cli import main; sys.argv[0] = 'clip-rt'; main()"]


def export_code_key(repo: Path) -> str:
    """sha256 over the sources that decide what an export writes."""
    h = hashlib.sha256()
    files = sorted((repo / "export").rglob("*.py")) + [repo / "clip_rt" / "bundle" / "manifest.py"]
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _prefix(model: str, seed: int) -> str:
    return f"{model.replace('/', '-')}-seed{seed}-"


def bundle_dirs(cache: Path, repo: Path, model: str, seed: int) -> dict[str, Path]:
    base = cache / "bundles" / f"{_prefix(model, seed)}{export_code_key(repo)}"
    return {"full": base / "full", "slim": base / "slim"}


def stale_exports(cache: Path, current: Path, model: str, seed: int) -> list[Path]:
    """The same model and seed exported by other export code (a key other than *current*'s):
    replaced by *current*, so the cache holds one export per model (about 1 GB for ViT-B-32)."""
    prefix = _prefix(model, seed)
    folder = cache / "bundles"
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and p != current
        and p.name.startswith(prefix)
        and len(p.name) == len(current.name)
        and "-" not in p.name[len(prefix) :]
    )


def export_args(model: str, seed: int, kind: str, out: Path) -> list[str]:
    args = ["export", model, "--pretrained", "none", "--seed", str(seed), "--precision", "int8", "-o", str(out)]
    if kind == "slim":
        args.append("--no-fp32")
    elif kind != "full":
        raise ValueError(f"bundle kind must be full or slim, not {kind!r}")
    return args


def ensure_bundles(
    cache: Path,
    repo: Path,
    model: str,
    seed: int,
    log: Callable[[str], None],
    hold: Callable[[str], AbstractContextManager] = lambda what: contextlib.nullcontext(),
) -> dict[str, Path]:
    """Each missing export runs inside ``hold(what)`` (the shared heavy lock, see lock.py)."""
    dirs = bundle_dirs(cache, repo, model, seed)
    for old in stale_exports(cache, dirs["full"].parent, model, seed):
        log(f"bundle: removing {old.name} (exported by other export code)")
        shutil.rmtree(old)
    for kind, out in dirs.items():
        if (out / "manifest.json").is_file():
            log(f"bundle: {model} {kind} cached at {out}")
            continue
        if out.exists():  # an export that did not finish: the exporter refuses to overwrite
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"bundle: exporting {model} {kind} (clip-rt {' '.join(export_args(model, seed, kind, out))})")
        with hold(f"export {model} {kind}"):
            proc = subprocess.run(
                [*CLI, *export_args(model, seed, kind, out), "--quiet"], capture_output=True, text=True
            )
        if proc.returncode:
            raise RuntimeError(f"export of {model} ({kind}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return dirs


def bundle_bytes(bundle: Path) -> int:
    """Bytes of the files the manifest lists plus the manifest itself."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return sum(int(e["bytes"]) for e in manifest["files"].values()) + (bundle / "manifest.json").stat().st_size


def manifest_parity(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text()).get("parity", {})
