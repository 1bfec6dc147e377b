"""Run a command inside the arm64 root file system, emulated by qemu-user.

Every call starts a private mount namespace (``unshare --mount``, propagation private) and does
its mounts there, then ``chroot``s. Nothing is mounted on the host: when the last process of the
namespace exits, the kernel drops its mounts, even after a crash or a kill -9, so there is
nothing to clean up and no stale mount can pile up.

Inside, the root file system itself is mounted read-only (the cache stays pristine; runs write
only to the bind-mounted work folder and tmpfs), and:

- ``/proc`` is a fresh procfs, with the fake arm64 ``/proc/cpuinfo`` bound over it (see
  cpuinfo.py: onnxruntime segfaults on the host's Intel one);
- ``/sys`` is the host's, read-only (CPU topology for onnxruntime's cpuinfo);
- ``/dev`` is a small tmpfs with null/zero/full/random/urandom and its own ``/dev/shm``;
- ``/tmp`` is a tmpfs;
- the host's ``resolv.conf`` and CA bundle (pip reaches PyPI through whatever TLS setup the host
  has) are bound read-only;
- the caller's folders are bound at the guest paths it names.

``QEMU_CPU`` selects the emulated core for every arm64 process started inside. qemu 7.2's
default (``max``) advertises SME and gives wrong int8 results with onnxruntime: the check
never runs without an explicit model.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEV_NODES = ("null", "zero", "full", "random", "urandom")


@dataclass(frozen=True)
class Bind:
    host: Path
    guest: str  # absolute path inside the root file system; must exist there (rootfs.MOUNT_DIRS)
    writable: bool = False


@dataclass
class Guest:
    root: Path
    qemu_cpu: str
    cpuinfo_file: Path
    binds: list[Bind] = field(default_factory=list)
    ca_bundle: Optional[Path] = None
    resolv_conf: Optional[Path] = Path("/etc/resolv.conf")
    tmp_size: str = "4g"

    def setup_script(self) -> str:
        """The shell commands that build the guest's view, run inside the new mount namespace."""
        r = shlex.quote(str(self.root))
        q = shlex.quote
        lines = [
            "set -eu",
            f"R={r}",
            'mount --bind "$R" "$R"',
            'mount -o remount,bind,ro "$R"',
            'mount -t proc proc "$R/proc"',
            f'mount --bind -o ro {q(str(self.cpuinfo_file))} "$R/proc/cpuinfo"',
            'mount --bind -o ro /sys "$R/sys"',
            'mount -t tmpfs -o size=16m,mode=755 dev "$R/dev"',
        ]
        for node in DEV_NODES:
            lines.append(f'touch "$R/dev/{node}" && mount --bind /dev/{node} "$R/dev/{node}"')
        lines += [
            'mkdir "$R/dev/shm" && mount -t tmpfs -o size=1g,mode=1777 shm "$R/dev/shm"',
            'ln -s /proc/self/fd "$R/dev/fd"',
            'ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; '
            'ln -s /proc/self/fd/2 "$R/dev/stderr"',
            f'mount -t tmpfs -o size={q(self.tmp_size)},mode=1777 tmp "$R/tmp"',
        ]
        if self.resolv_conf is not None and self.resolv_conf.exists():
            lines.append(f'mount --bind -o ro {q(str(self.resolv_conf))} "$R/etc/resolv.conf"')
        if self.ca_bundle is not None:
            lines.append(f'mount --bind -o ro {q(str(self.ca_bundle))} "$R/etc/ssl/certs/host-ca.crt"')
        for b in self.binds:
            if not b.guest.startswith("/"):
                raise ValueError(f"guest path must be absolute: {b.guest!r}")
            opt = "" if b.writable else "-o ro "
            lines.append(f'mount --bind {opt}{q(str(b.host))} "$R"{q(b.guest)}')
        return "\n".join(lines)

    def guest_env(self, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        env = {
            "PATH": GUEST_PATH,
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "QEMU_CPU": self.qemu_cpu,
            "PYTHONUNBUFFERED": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        if self.ca_bundle is not None:
            ca = "/etc/ssl/certs/host-ca.crt"
            env.update({"PIP_CERT": ca, "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca})
        env.update(extra or {})
        return env

    def argv(self, command: list[str], env: Optional[dict[str, str]] = None, cwd: str = "/") -> list[str]:
        """The host command line that runs *command* (a guest argv) in the guest."""
        if not command:
            raise ValueError("empty guest command")
        env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(self.guest_env(env).items()))
        # sh inside the guest: cd, then exec the command with its arguments untouched ("$@")
        in_guest = shlex.quote(f'cd {shlex.quote(cwd)} && exec "$@"')
        inner = (
            self.setup_script()
            + f'\nexec chroot "$R" /usr/bin/env -i {env_args} /bin/sh -c {in_guest} guest '
            + " ".join(map(shlex.quote, command))
        )
        return ["unshare", "--mount", "--propagation", "private", "--fork", "--", "/bin/sh", "-c", inner]

    def host_env(self, base: dict[str, str]) -> dict[str, str]:
        """Environment for the unshare process (QEMU_CPU also for the first arm64 exec)."""
        return dict(base, QEMU_CPU=self.qemu_cpu)
