"""Worst cases of hostile input, measured: peak memory per decode failure, per request body, per
connection, and descriptors across bad requests (docs/reliability.md, "Measured worst cases").

``python -m bench.hostile [--out FILE] [--only CASE ...] [--side 9400]`` writes
``bench/results/hostile.json``. Every case runs the real runtime on the torch-free fake bundle
(tests/fake_bundle.py) in child processes; memory is the child's peak RSS (``VmHWM`` from
``/proc``, read by the child as it exits or from a running server; not ``wait4``, whose figure
for a child starts at its parent's RSS when it forked), so it includes the interpreter and the
sessions (the ``base`` figures say how much):

- ``decode``: ``clip-rt classify`` of a folder of 16 PNGs of SIDE x SIDE (9400: 353 MB each
  decoded), valid and cut at 60 %, normal and ``--low-memory``;
- ``serve_bodies``: a server per body shape, one 32 MiB body, then 6 at once: small objects
  (refused before parsing), one 32 MiB string and 6,000 strings of 5.5 KB (both parsed, then
  refused as too long / too many inputs); the growth of the server's peak RSS over its idle peak;
- ``serve_images``: one request of 8 images named by path, valid and cut, SIDE x SIDE, each in
  a new server;
- ``serve_connections``: RSS growth for 900 idle connections and for 500 that each sent 15 KB
  of a request head, and the open descriptors before and after 1,000 requests for a folder.

To measure another checkout (the code before a change), run with ``PYTHONPATH=<that checkout>``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results" / "hostile.json"
CLI = "import sys; sys.argv[0] = 'clip-rt'; from clip_rt.cli import main; main()"
# The CLI, printing its own peak RSS to stderr as it exits.
CLI_PEAK = (
    "import atexit, sys\n"
    "def peak():\n"
    "    hwm = next(x for x in open('/proc/self/status') if x.startswith('VmHWM:')).split()[1]\n"
    "    sys.stderr.write(f'\\npeak_rss_kb {hwm}\\n')\n"
    "atexit.register(peak)\n" + CLI.replace("; ", "\n")
)
MB = 1 << 20


def png_pair(folder: Path, side: int, count: int) -> tuple[Path, Path]:
    """*count* copies of one SIDE x SIDE RGB PNG in ``valid/``, the same cut at 60 % in ``cut/``."""
    import numpy as np
    from PIL import Image

    arr = np.zeros((side, side, 3), np.uint8)
    arr[:, :, 0] = (np.arange(side) % 256)[None, :]
    arr[:, :, 2] = (np.arange(side) % 251)[:, None]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    del arr
    data = buf.getvalue()
    valid, cut = folder / "valid", folder / "cut"
    for sub, payload in ((valid, data), (cut, data[: int(len(data) * 0.6)])):
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (sub / f"{i:02d}.png").write_bytes(payload)
    return valid, cut


def command_peak(cli_args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``clip-rt CLI_ARGS`` in a child that reports its own peak RSS as it exits."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PEAK, *cli_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        text=True,
        errors="replace",
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    peak = [int(line.split()[1]) for line in lines if line.startswith("peak_rss_kb ")]
    lines = [line for line in lines if not line.startswith("peak_rss_kb ")]
    return {
        "exit": proc.returncode,
        "peak_rss_mb": round(peak[-1] / 1024, 1) if peak else None,
        "wall_s": round(time.perf_counter() - start, 2),
        "last_stderr_line": lines[-1][:200] if lines else "",
    }


class Served:
    """``clip-rt serve`` on a free loopback port, for one case."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        cmd = [sys.executable, "-c", CLI, "serve", *args, "--port", "0", "--log-level", "warning"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
        )
        self.port = 0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.search(r" on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while self.request("GET", "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not get ready")
            time.sleep(0.1)

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> tuple[int, bytes]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def status_kb(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith(key + ":")).split()[1])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def concurrently(served: Served, bodies: list[bytes]) -> list[int]:
    codes: list[int] = [0] * len(bodies)

    def send(i: int) -> None:
        codes[i] = served.request("POST", "/v1/embeddings", bodies[i])[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return codes


def serve_bodies(fake: Path, env: dict[str, str]) -> dict[str, Any]:
    size = 32 * MB - 64
    shapes = {
        "small_objects": b'{"input": [' + b",".join([b"{}"] * (size // 3)) + b"]}",
        "one_string": json.dumps({"input": ["a" * size]}).encode(),
        "many_strings": json.dumps({"input": ["b" * (size // 6000 - 8)] * 6000}).encode(),
    }
    out: dict[str, Any] = {}
    for name, body in shapes.items():
        served = Served([str(fake)], env)
        try:
            served.request("POST", "/v1/embeddings", b'{"input": "warm up"}')
            base = served.status_kb("VmHWM")
            alone = concurrently(served, [body])
            one = served.status_kb("VmHWM")
            codes = concurrently(served, [body] * 6)
            out[name] = {
                "body_mb": round(len(body) / MB, 1),
                "base_peak_mb": round(base / 1024, 1),
                "one_code": alone[0],
                "one_peak_growth_mb": round((one - base) / 1024, 1),
                "six_codes": codes,
                "six_peak_growth_mb": round((served.status_kb("VmHWM") - base) / 1024, 1),
            }
        finally:
            served.stop()
    return out


def serve_images(fake: Path, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sub in ("valid", "cut"):
        served = Served([str(fake), "--allow-dir", str(folder)], env)
        try:
            base = served.status_kb("VmHWM")
            body = json.dumps({"input": [{"path": f"{sub}/{i:02d}.png"} for i in range(8)]}).encode()
            code = served.request("POST", "/v1/embeddings", body)[0]
            out[sub] = {
                "code": code,
                "base_peak_mb": round(base / 1024, 1),
                "peak_rss_mb": round(served.status_kb("VmHWM") / 1024, 1),
            }
        finally:
            served.stop()
    return out


def serve_connections(fake: Path, work: Path, env: dict[str, str]) -> dict[str, Any]:
    (work / "allowed" / "a folder.png").mkdir(parents=True, exist_ok=True)
    served = Served([str(fake), "--allow-dir", str(work / "allowed"), "--header-timeout", "120"], env)
    out: dict[str, Any] = {}
    try:
        served.request("POST", "/v1/embeddings", b'{"input": "warm up"}')
        body = b'{"input": [{"path": "a folder.png"}]}'
        served.request("POST", "/v1/embeddings", body)
        time.sleep(0.5)
        fds = served.fds()
        codes = {served.request("POST", "/v1/embeddings", body)[0] for _ in range(1000)}
        time.sleep(1)
        out["folder_requests"] = {
            "requests": 1000,
            "codes": sorted(codes),
            "fds_before": fds,
            "fds_after": served.fds(),
        }
        for name, count, sent in (("idle", 900, b""), ("partial_heads", 500, b"POST / HTTP/1.1\r\nX: " + b"a" * 15000)):
            before = served.status_kb("VmRSS")
            socks = []
            for _ in range(count):
                s = socket.create_connection(("127.0.0.1", served.port), timeout=30)
                if sent:
                    s.sendall(sent)
                socks.append(s)
            time.sleep(2)
            after = served.status_kb("VmRSS")
            ok = served.request("POST", "/v1/embeddings", b'{"input": "a cat"}')[0]
            out[name] = {
                "connections": count,
                "rss_growth_mb": round((after - before) / 1024, 1),
                "kb_per_connection": round((after - before) / count, 1),
                "request_meanwhile": ok,
            }
            for s in socks:
                s.close()
            time.sleep(1)
        return out
    finally:
        served.stop()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--side", type=int, default=9400, help="image side for the decode cases")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    results: dict[str, Any] = {"python_path": os.environ.get("PYTHONPATH", ""), "side": args.side, "cases": {}}
    want = set(args.only or ["decode", "serve_bodies", "serve_images", "serve_connections"])
    with tempfile.TemporaryDirectory(prefix="clip-rt-hostile-") as tmp:
        work = Path(tmp)
        fake = build_fake_bundle(work / "fake-clip", precisions=("fp32",))
        env = {"CLIP_RT_HOME": str(work / "home")}
        cases = results["cases"]
        if "decode" in want or "serve_images" in want:
            valid, cut = png_pair(work / "images", args.side, 16)
        if "decode" in want:
            for mode in ("normal", "low"):
                for name, folder in (("valid", valid), ("cut", cut)):
                    extra = ["--low-memory"] if mode == "low" else ["--no-low-memory"]
                    cases[f"decode_{mode}_{name}"] = command_peak(
                        [
                            "classify",
                            str(folder),
                            "-m",
                            str(fake),
                            "-l",
                            "cat,dog",
                            "-o",
                            str(work / "run.jsonl"),
                            *extra,
                        ],
                        env,
                    )
        if "serve_images" in want:
            cases["serve_images"] = serve_images(fake, work / "images", env)
        if "serve_bodies" in want:
            cases["serve_bodies"] = serve_bodies(fake, env)
        if "serve_connections" in want:
            cases["serve_connections"] = serve_connections(fake, work, env)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
