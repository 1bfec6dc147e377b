"""What the x86 host needs to run arm64 programs: Debian packages and a binfmt_misc handler.

Each piece is checked first and only set up when missing, so the script works from a fresh
clone on a fresh Debian/Ubuntu machine (as root) and changes nothing on one already set up.
Installed packages stay (they are installs, like pip's). The binfmt_misc file system is
unmounted again if this script mounted it; on this kernel (6.x, binfmt_misc per mount) that
also drops the qemu-aarch64 registration, which the next run makes again (a fraction of a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

# command -> the Debian package that provides it
HOST_TOOLS = {
    "qemu-aarch64-static": "qemu-user-static",  # the emulator (static: runs inside a chroot)
    "update-binfmts": "binfmt-support",  # registers it with the kernel for arm64 ELF files
    "mmdebstrap": "mmdebstrap",  # builds the arm64 Debian root file system
    # mmdebstrap only recommends it (and we install without recommends), but refuses a foreign
    # architecture without it: "E: install arch-test for foreign architecture support".
    "arch-test": "arch-test",
    "unshare": "util-linux",  # private mount namespace for the guest's mounts
}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = "qemu-aarch64"

Log = Callable[[str], None]


class HostError(RuntimeError):
    """The host cannot be prepared (not root, no apt, a registration that does not take)."""


def missing_packages(which: Callable[[str], Optional[str]] = shutil.which) -> list[str]:
    """The Debian packages whose commands are not on PATH, in a stable order."""
    return sorted({pkg for cmd, pkg in HOST_TOOLS.items() if which(cmd) is None})


def install_packages(packages: list[str], log: Log) -> None:
    if not packages:
        return
    if os.geteuid() != 0:
        raise HostError(
            f"missing {' '.join(packages)}; install them (apt-get install {' '.join(packages)}) or run as root"
        )
    if shutil.which("apt-get") is None:
        raise HostError(f"missing {' '.join(packages)} and no apt-get to install them with")
    log(f"host: apt-get install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def binfmt_mounted(mounts_text: Optional[str] = None) -> bool:
    text = mounts_text if mounts_text is not None else Path("/proc/mounts").read_text()
    return any(line.split()[1:3] == [str(BINFMT_DIR), "binfmt_misc"] for line in text.splitlines() if line.strip())


def binfmt_entry_flags(entry_text: str) -> Optional[str]:
    """The ``flags:`` of an enabled binfmt_misc entry (e.g. ``PF``), None if disabled."""
    lines = entry_text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return None
    for line in lines:
        if line.startswith("flags:"):
            return line.split(":", 1)[1].strip()
    return ""


class Binfmt:
    """Context manager: qemu-aarch64 registered for arm64 ELF files while inside.

    The F flag (Debian's qemu-user-static sets it) makes the kernel open the interpreter at
    registration time, so arm64 programs run inside a chroot without qemu copied into it."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.mounted_here = False

    def __enter__(self) -> Binfmt:
        if not binfmt_mounted():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True)
            self.mounted_here = True
        entry = BINFMT_DIR / BINFMT_ENTRY
        flags = binfmt_entry_flags(entry.read_text()) if entry.exists() else None
        if flags is None:
            self.log("host: update-binfmts --enable qemu-aarch64")
            subprocess.run(["update-binfmts", "--enable", BINFMT_ENTRY], check=True)
            flags = binfmt_entry_flags(entry.read_text()) if entry.exists() else None
        if flags is None:
            raise HostError(f"{entry}: qemu-aarch64 is not registered after update-binfmts --enable")
        if "F" not in flags:
            raise HostError(
                f"{entry}: registered without the F (fix-binary) flag ({flags!r}); arm64 programs in a chroot "
                "would not find the emulator. Use Debian's qemu-user-static registration."
            )
        return self

    def __exit__(self, *exc: object) -> None:
        # Leave the host as found: a file system this script mounted goes (with its registration).
        if self.mounted_here:
            subprocess.run(["umount", str(BINFMT_DIR)], check=False)
            self.mounted_here = False


def prepare_host(log: Log) -> None:
    """Root check and packages (the binfmt handler is the ``Binfmt`` context)."""
    if os.uname().machine != "x86_64":
        log(f"host: {os.uname().machine} (not x86_64); this check was written for an x86_64 host")
    install_packages(missing_packages(), log)
