"""Starting a real `clip-rt serve` on a free loopback port, and plain-HTTP calls to it."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

START_TIMEOUT = 60.0


class Server:
    """``clip-rt serve ARGS --port 0`` in a subprocess; :meth:`stop` sends SIGTERM and returns
    the exit status. Use as a context manager."""

    def __init__(self, args: Sequence[str], home: Path, env: Optional[dict[str, str]] = None) -> None:
        self.args = list(args)
        self.home = home
        self.env = {**os.environ, "CLIP_RT_HOME": str(home), **(env or {})}
        self.proc: Optional[subprocess.Popen[str]] = None
        self.url = ""
        self.port = 0
        self.log: list[str] = []
        self._reader: Optional[threading.Thread] = None

    def start(self, wait_ready: bool = True) -> "Server":
        cmd = [sys.executable, "-c", "from clip_rt.cli import main; main()", "serve", *self.args, "--port", "0",
               "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r" on (http://127\.0\.0\.1:(\d+))", line)
                if m and not found.is_set():
                    self.url, self.port = m.group(1), int(m.group(2))
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not start (exit {self.proc.returncode}):\n{self.output()}")
        if wait_ready:
            self.wait_ready(deadline)
        return self

    def wait_ready(self, deadline: Optional[float] = None) -> None:
        deadline = deadline or time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if call(self, "GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        return "".join(self.log)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
        finally:
            self.kill()


def call(server: Server, method: str, path: str, body: Any = None, *, raw: Optional[bytes] = None,
         headers: Optional[dict[str, str]] = None, timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON or text) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if out_headers.get("content-type", "").startswith("application/json"):
        return resp.status, out_headers, json.loads(payload)
    return resp.status, out_headers, payload.decode("utf-8", "replace")


def png_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30),
              fmt: str = "PNG", seed: Optional[int] = None) -> bytes:
    if seed is not None:
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    else:
        img = Image.new("RGB", size, colour)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return 0.0
