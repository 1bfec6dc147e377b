"""``python -m bench.serve``: load test of `clip-rt serve` on loopback, batching on vs off.

Two servers on the same bundle, started side by side (an idle one costs nothing): one with
dynamic batching (``--max-batch-size 8``, the default, and the backend's throughput streams
where the CPU plan has them) and one that encodes one request at a time (``--max-batch-size 1
--image-streams 1``). For 1, 8 and 32 concurrent clients, each client sends
POST /v1/embeddings with one JPEG photo (a new request as soon as the last one is answered,
over a kept-alive connection) for a fixed number of requests. The modes are interleaved round
by round, so the shared machine's noise hits both alike; per configuration the best round's
throughput is kept and the latencies of all its requests give p50/p99.

Bounded: fixed request counts, a timeout per request, loopback only, servers stopped (SIGTERM)
at the end. Writes bench/results/serve.json (serve_fp32.json, serve_int8.json, ... for an explicit --precision).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, log, machine_info, target, write_result

DEFAULT_BUNDLE = "/work/bundles/ViT-B-32-random"
CLIENTS = (1, 8, 32)
GOAL = 2.0  # throughput of 32 clients, batching on / off


def photo_jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    """A real photograph (scikit-image's astronaut, resized) as a JPEG, else a noise image."""
    from PIL import Image

    try:
        from skimage import data

        img = Image.fromarray(data.astronaut()).resize(size)
    except ImportError:
        import numpy as np

        img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def load(port: int, clients: int, requests: int, body: bytes, timeout: float, reference: Any = None) -> dict[str, Any]:
    """*clients* threads send *requests* in all; throughput and latency percentiles, and the
    largest difference of any answer from *reference* (every request sends the same photo)."""
    import numpy as np

    latencies: list[float] = []
    diffs: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [requests]
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        barrier.wait()
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/embeddings", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 200 and len(json.loads(payload)["data"]) == 1
                if ok and reference is not None:
                    emb = np.frombuffer(base64.b64decode(json.loads(payload)["data"][0]["embedding"]), "<f4")
                    with lock:
                        diffs.append(float(np.abs(emb - reference).max()))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, payload = False, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            took = time.perf_counter() - t0
            with lock:
                (latencies.append(took) if ok else errors.append(payload[:200].decode("utf-8", "replace")))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

    return {
        "clients": clients,
        "requests": requests,
        "ok": len(lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(wall, 3),
        "throughput_rps": round(len(lat) / wall, 2) if wall else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.mean(lat) * 1000, 1) if lat else None,
        "max_abs_diff_vs_in_process": max(diffs) if diffs else None,
    }


def batch_stats(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        for key in ("clip_rt_batch_size_sum", "clip_rt_batch_size_count"):
            if line.startswith(key + "{") and 'encoder="image"' in line:
                out[key] = float(line.rsplit(" ", 1)[1])
    return out


def markdown(payload: dict[str, Any]) -> str:
    """The results as a markdown table (docs/serve.md, README)."""
    rows = ["| clients | mode | requests/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    for r in payload["results"]:
        mode = "dynamic batching" if r["mode"] == "batching" else "one request at a time"
        rows.append(
            f"| {r['clients']} | {mode} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    ratios = ", ".join(f"{c} clients {v}x" for c, v in payload["batching_speedup"].items())
    m = payload["machine"]
    return "\n".join(rows) + (
        f"\n\nThroughput from batching: {ratios}; mean image batch {payload['mean_image_batch']}. "
        + (
            f"Image encoder: {payload['runtime']['image']}; batching server: {payload['runtime']['image_streams']} "
            f"image stream(s). "
            if payload.get("runtime")
            else ""
        )
        + f"{payload['precision']}, {m.get('cpu_model', '?')}, {m.get('cpu_count')} CPUs, ISA "
        f"{' '.join(m.get('isa', []))}, load average {m.get('load_average_1_5_15min')} at the end; "
        f"`{payload['command']}` ({payload['when']})."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle",
        default=os.environ.get("CLIP_RT_BENCH_BUNDLE", DEFAULT_BUNDLE),
        help="bundle directory (default: %(default)s; export one with "
        "`clip-rt export ViT-B-32 --pretrained none --seed 0 -o DIR`)",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "int8", "fp16"],
        help="auto: what the runtime chooses on this CPU (the default a user gets)",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--requests-per-client", type=int, default=6, help="requests per client and configuration (at least 24 in all)"
    )
    ap.add_argument("--max-batch-size", type=int, default=8, help="batching-on server's --max-batch-size")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--table", action="store_true", help="print --out's serve.json as markdown (runs nothing)")
    args = ap.parse_args(argv)
    if args.table:
        name = "serve" if args.precision == "auto" else f"serve_{args.precision}"
        print(markdown(json.loads((args.out / f"{name}.json").read_text(encoding="utf-8"))))
        return 0
    if not (Path(args.bundle) / "manifest.json").is_file():
        ap.error(f"no bundle at {args.bundle}: pass --bundle DIR")

    from clip_rt_fixtures.server import Server  # the tests' subprocess launcher: one way to start a server

    photo = photo_jpeg()
    import clip_rt

    # The in-process embedding of the photo (batch of one): what every answer should be.
    chosen = None if args.precision == "auto" else args.precision
    model = clip_rt.load(args.bundle, precision=chosen, cache=False)
    reference = model.encode_image([photo])[0]
    runtime = {"image": model.plan.image.summary(), "image_streams": model.image_streams}
    model.close()
    spec = args.bundle if chosen is None else f"{args.bundle}@{chosen}"
    body = json.dumps({"input": [{"image": base64.b64encode(photo).decode()}], "encoding_format": "base64"}).encode()
    modes = {
        "batching": ["--max-batch-size", str(args.max_batch_size)],
        "one_at_a_time": ["--max-batch-size", "1", "--image-streams", "1"],
    }
    home = Path(tempfile.mkdtemp(prefix="clip-rt-bench-serve-"))
    servers = {mode: Server([spec, *extra, "--max-queue", "256"], home / mode) for mode, extra in modes.items()}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():  # warm-up: sessions, arenas, the first batch of each size
            load(s.port, 8, 16, body, args.timeout)
        for rnd in range(args.rounds):
            for clients in CLIENTS:
                for mode, s in servers.items():
                    n = max(24, clients * args.requests_per_client)
                    res = load(s.port, clients, n, body, args.timeout, reference)
                    res["round"] = rnd
                    runs.setdefault((mode, clients), []).append(res)
                    log(
                        f"round {rnd} {mode:>14} {clients:>2} clients: {res['throughput_rps']} req/s, "
                        f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, {res['errors']} errors"
                    )
        stats = {mode: batch_stats(s.port) for mode, s in servers.items()}
        alone = load(servers["batching"].port, 1, 1, body, args.timeout, reference)["max_abs_diff_vs_in_process"]
    finally:
        codes = {mode: s.stop() if s.proc is not None else None for mode, s in servers.items()}
        for s in servers.values():
            s.kill()
    table = []
    for (mode, _clients), results in runs.items():
        best = max(results, key=lambda r: r["throughput_rps"] or 0)
        table.append({"mode": mode, **best, "rounds": [r["throughput_rps"] for r in results]})
    by = {(r["mode"], r["clients"]): r for r in table}
    ratios = {
        c: round(by[("batching", c)]["throughput_rps"] / by[("one_at_a_time", c)]["throughput_rps"], 3)
        for c in CLIENTS
        if by[("one_at_a_time", c)]["throughput_rps"]
    }
    mean_batch = {
        mode: round(s.get("clip_rt_batch_size_sum", 0) / s["clip_rt_batch_size_count"], 2)
        for mode, s in stats.items()
        if s.get("clip_rt_batch_size_count")
    }
    given = " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    command = f"flock /work/locks/heavy python -m bench.serve {given}"
    payload = {
        "benchmark": "serve",
        "command": command.strip(),
        "machine": machine_info(),
        "bundle": str(args.bundle),
        "precision": args.precision,
        "runtime": runtime,
        "photo": "skimage astronaut 640x480 JPEG q90",
        "request": "POST /v1/embeddings, one image (base64), encoding_format base64",
        "modes": {m: " ".join(x) for m, x in modes.items()},
        "rounds": args.rounds,
        "results": sorted(table, key=lambda r: (r["clients"], r["mode"])),
        "batching_speedup": ratios,
        "parity": {
            "one_request_alone_max_abs_diff": alone,
            "note": "0 = bit for bit; answers computed in batches > 1 are in results[].max_abs_diff_vs_in_process",
        },
        "mean_image_batch": mean_batch,
        "server_exit_codes": codes,
        "targets": [
            target(
                "serve throughput, 32 clients x 1 image, batching on / one at a time", ratios.get(32), GOAL, unit="x"
            )
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result("serve" if args.precision == "auto" else f"serve_{args.precision}", payload, args.out)
    log(f"speed-up from batching: {ratios}; mean batch {mean_batch}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
