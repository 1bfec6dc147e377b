"""The arm64 Debian root file system: built once with mmdebstrap, then reused from the cache.

A build takes a few minutes (every package's maintainer scripts run under qemu) and about 270 MB.
It is written to ``rootfs.tmp-<pid>`` and renamed when complete, so an interrupted build never
leaves a half-made root file system that a later run would trust; ``stamp.json`` inside records
what it was built from, and a different recipe (suite, packages, mirrors) rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .guest import du_bytes

STAMP = "clip-rt-arm64-stamp.json"
RECIPE_VERSION = 1  # bump when the build steps below change in a way the fields do not show
# Empty files the guest's bind mounts land on (mount points must exist in the tree).
MOUNT_FILES = ("etc/resolv.conf", "etc/ssl/certs/host-ca.crt")
MOUNT_DIRS = ("check", "bundles", "inputs", "root/.cache/pip", "proc", "sys", "dev", "tmp")


@dataclass(frozen=True)
class Recipe:
    suite: str = "bookworm"
    # python3-venv brings python3 and the pip wheel ensurepip installs; nothing else is needed
    # on the device: every Python dependency comes from PyPI as an aarch64 wheel.
    packages: tuple[str, ...] = ("python3-venv", "ca-certificates")
    mirrors: tuple[str, ...] = field(default_factory=lambda: default_mirrors("bookworm"))
    variant: str = "minbase"
    version: int = RECIPE_VERSION

    def stamp(self) -> dict:
        d = asdict(self)
        d["packages"] = list(self.packages)
        d["mirrors"] = list(self.mirrors)
        return d


def default_mirrors(suite: str, mirror: str = "http://deb.debian.org/debian") -> tuple[str, ...]:
    base = mirror.rstrip("/")
    security = base[: -len("/debian")] + "/debian-security" if base.endswith("/debian") else None
    lines = [f"deb {base} {suite} main", f"deb {base} {suite}-updates main"]
    if security:
        lines.append(f"deb {security} {suite}-security main")
    return tuple(lines)


def is_current(root: Path, recipe: Recipe) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return {k: v for k, v in stamp.items() if k != "built"} == recipe.stamp()


def ensure_rootfs(root: Path, recipe: Recipe, log: Callable[[str], None], rebuild: bool = False) -> Path:
    """The root file system at *root*, built (or rebuilt) when missing or stale."""
    if not rebuild and is_current(root, recipe):
        log(f"rootfs: cached at {root}")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    for stale in root.parent.glob(f"{root.name}.tmp-*"):  # an earlier interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    log(f"rootfs: building Debian {recipe.suite} arm64 ({', '.join(recipe.packages)}) in {tmp} (a few minutes)")
    started = time.monotonic()
    cmd = [
        "mmdebstrap",
        "--arch=arm64",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        # no docs/man pages/locales: the guest only runs python
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        recipe.suite,
        str(tmp),
        *recipe.mirrors,
    ]
    try:
        subprocess.run(cmd, check=True)
        for rel in MOUNT_DIRS:
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        for rel in MOUNT_FILES:
            f = tmp / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            if f.is_symlink():
                f.unlink()
            f.touch()
        stamp = recipe.stamp()
        stamp["built"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"rootfs: built in {time.monotonic() - started:.0f} s, {du_bytes(root) / 2**20:.0f} MiB")
    return root
