"""Long streaming run: ``clip-rt classify DIR -o out.jsonl`` over N small images, RSS sampled.

``python -m bench.stream_100k [--n 100000] [--bundle tiny|fake|DIR]`` writes
``bench/results/stream_100k.json``: image count, records written, errors, RSS (start, after
the first 1000 records, end, max), wall time, images/s and the exact command.

The images are a few hundred distinct tiny PNG/JPEG files (varied sizes and colours) hard-linked
under N names in folders of 1000, so generating 100,000 takes seconds and little disk. Every
``--broken-every``-th name is a truncated JPEG, so the error path runs too (classify then
exits 1, and every broken file must still get a record with its ``error``).

The run goes through the real runtime in a subprocess (the installed ``clip-rt`` command).
Memory is "flat" when RSS at the end minus RSS after the first 1000 records is small: that
difference is ``rss_growth_mb``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS_DIR / "stream_100k.json"
LABELS = "cat,dog,bird,car,tree,house,red,green"
DISTINCT = 300  # distinct encoded images; the rest are hard links to them
PER_FOLDER = 1000
BASELINE_RECORDS = 1000  # RSS growth is measured from the first sample with this many records
MB = 1024 * 1024


# -- images -------------------------------------------------------------------------------------
def _distinct_images(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(extension, encoded bytes): PNG and JPEG, 8..96 px per side, random colours and noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = (int(x) for x in rng.integers(8, 97, size=2))
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-40, 41, size=(h, w, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        ext = ".png" if i % 2 else ".jpg"
        Image.fromarray(arr).save(buf, format="PNG" if ext == ".png" else "JPEG", quality=85)
        out.append((ext, buf.getvalue()))
    return out


def make_images(folder: Path, n: int, *, broken_every: int = 0, seed: int = 0) -> dict[str, int]:
    """N image names under *folder* (hard links to a few hundred files); returns counts."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = folder / "_sources"  # the originals, named *.bin so that the folder walk skips them
    sources.mkdir(exist_ok=True)
    distinct = _distinct_images(min(DISTINCT, max(n, 1)), seed)
    src_paths = []
    for i, (ext, data) in enumerate(distinct):
        p = sources / f"src{i:04d}{ext}.bin"  # .bin: not picked up by the folder walk
        p.write_bytes(data)
        src_paths.append((ext, p))
    jpeg = next(data for ext, data in distinct if ext == ".jpg")
    broken_src = sources / "broken.jpg.bin"
    broken_src.write_bytes(jpeg[: len(jpeg) // 3])  # a truncated JPEG: decoding fails
    broken = 0
    for i in range(n):
        sub = folder / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(exist_ok=True)
        if broken_every and i % broken_every == broken_every - 1:
            ext, src = ".jpg", broken_src
            broken += 1
        else:
            ext, src = src_paths[i % len(src_paths)]
        _link(src, sub / f"img{i:06d}{ext}")
    return {"images": n, "distinct_files": len(src_paths), "broken": broken}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: copy
        shutil.copyfile(src, dst)


# -- bundle -------------------------------------------------------------------------------------
def make_bundle(kind: str, work: Path) -> tuple[Path, str]:
    """(bundle dir, description). ``tiny``: tests/data/tiny-clip.json exported with random
    weights (needs torch + open_clip); ``fake``: clip_rt_fixtures.fake_bundle; else a bundle directory."""
    repo = Path(__file__).resolve().parent.parent
    if kind == "fake":
        from clip_rt_fixtures.fake_bundle import build_fake_bundle

        return build_fake_bundle(work / "fake-clip"), "fake (clip_rt_fixtures.fake_bundle: pool + matmul graphs)"
    if kind == "tiny":
        import open_clip
        import torch  # noqa: F401 - fail early with a clear ImportError

        from clip_rt_export import export_bundle
        from clip_rt_export.load import resolve

        config = repo / "tests" / "data" / "tiny-clip.json"
        resolve("tiny-clip", "none", config)
        torch.manual_seed(0)
        ckpt = work / "tiny.pt"
        torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), ckpt)
        out = export_bundle(
            "tiny-clip", pretrained=str(ckpt), precisions=("fp32",), output=work / "tiny-clip", model_config=config
        )
        return Path(out), "tiny (tests/data/tiny-clip.json exported by clip_rt_export, random weights, fp32)"
    path = Path(kind)
    return path, f"bundle directory {path}"


def default_bundle_kind() -> str:
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return "fake"
    return "tiny"


# -- the run ------------------------------------------------------------------------------------
class LineCounter:
    """Counts complete lines of a growing file without re-reading it."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def update(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.lines
        self.lines += data.count(b"\n")
        self.offset += len(data)
        return self.lines


def clip_rt_command() -> str:
    """The installed ``clip-rt`` script next to this interpreter (or on PATH)."""
    here = Path(sys.executable).with_name("clip-rt")
    found = str(here) if here.exists() else shutil.which("clip-rt")
    if not found:
        raise SystemExit("the clip-rt command is not installed: pip install -e .")
    return found


def run_stream(
    images: Path,
    bundle: Path,
    out: Path,
    *,
    labels: str = LABELS,
    batch_size: int = 32,
    threads: Optional[int] = None,
    sample_every: float = 2.0,
    env: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """Run classify in a subprocess, sampling its RSS; returns the measurements."""
    import psutil

    cmd = [
        clip_rt_command(),
        "classify",
        str(images),
        "-m",
        str(bundle),
        "-l",
        labels,
        "-o",
        str(out),
        "--batch-size",
        str(batch_size),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    counter = LineCounter(out)
    samples: list[tuple[float, float, int]] = []  # (seconds, rss MB, records on disk)
    t0 = time.perf_counter()
    err_path = out.with_name(out.name + ".stderr")  # a file, not a pipe: a full pipe would stall the run
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    ps = psutil.Process(proc.pid)
    last = -1e9
    while proc.poll() is None:
        now = time.perf_counter() - t0
        # Dense at first to catch the start, then every *sample_every* seconds.
        if now - last >= (0.2 if now < 5 else sample_every):
            try:
                rss = ps.memory_info().rss / MB
            except psutil.NoSuchProcess:  # it exited between poll() and here
                break
            samples.append((round(now, 2), round(rss, 1), counter.update()))
            last = now
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.wait()
    records = errors = 0
    paths: set[str] = set()
    with open(out, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            records += 1
            errors += rec["error"] is not None
            paths.add(rec["path"])
    base = next((s for s in samples if s[2] >= BASELINE_RECORDS), samples[-1] if samples else None)
    rss_values = [s[1] for s in samples]
    stderr = err_path.read_bytes().decode("utf-8", "replace")
    # The command's own count ("N processed, M failed"), which its failure lines may push out of the tail.
    summary = next((line for line in reversed(stderr.splitlines()) if " processed, " in line), None)
    return {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "summary": summary,
        "stderr_tail": stderr[-2000:],
        "records_written": records,
        "distinct_paths": len(paths),
        "errors": errors,
        "wall_s": round(wall, 2),
        "images_per_s": round(records / wall, 1) if wall else None,
        "rss_start_mb": rss_values[0] if rss_values else None,
        "rss_after_1000_mb": base[1] if base else None,
        "rss_end_mb": rss_values[-1] if rss_values else None,
        "rss_max_mb": max(rss_values) if rss_values else None,
        "rss_growth_mb": round(rss_values[-1] - base[1], 1) if base else None,
        "samples": _thin(samples, 200),
    }


def _thin(samples: list[tuple[float, float, int]], keep: int) -> list[list[float]]:
    """At most *keep* samples, evenly spread, first and last kept."""
    if len(samples) <= keep:
        return [list(s) for s in samples]
    step = (len(samples) - 1) / (keep - 1)
    return [list(samples[round(i * step)]) for i in range(keep)]


def run_parallel(
    folders: list[Path],
    bundle: Path,
    work: Path,
    labels: list[str],
    *,
    batch_size: int,
    threads: Optional[int],
    env: dict[str, str],
) -> dict[str, Any]:
    """One classify process per folder, all at once, sharing one CLIP_RT_HOME (store + prompt cache)."""
    import threading

    results: list[Optional[dict[str, Any]]] = [None] * len(folders)

    def one(i: int) -> None:
        results[i] = run_stream(
            folders[i],
            bundle,
            work / f"out{i}.jsonl",
            labels=labels[i],
            batch_size=batch_size,
            threads=threads,
            env=env,
        )

    t0 = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(len(folders))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    from clip_rt.templates import SIMPLE  # classify's default templates

    expected = {t.replace("{}", lab) for labs in labels for lab in labs.split(",") for t in SIMPLE}
    done = [r for r in results if r is not None]
    records = sum(r["records_written"] for r in done)
    for r in done:
        r["samples"] = _thin(r["samples"], 40)
    return {
        "processes": len(folders),
        "wall_s": round(wall, 2),
        "records_written": records,
        "errors": sum(r["errors"] for r in done),
        "exit_codes": [r["exit_code"] for r in done],
        "images_per_s": round(records / wall, 1),
        "rss_growth_mb_max": max(r["rss_growth_mb"] or 0 for r in done),
        "cache": {**check_cache(Path(env["CLIP_RT_HOME"])), "expected_texts": len(expected)},
        "per_process": done,
    }


def check_cache(home: Path) -> dict[str, Any]:
    """The shared prompt cache after the run: SQLite's integrity check and what it holds."""
    import sqlite3

    con = sqlite3.connect(home / "cache" / "prompts.sqlite")
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchall()
        rows, texts = con.execute("SELECT COUNT(*), COUNT(DISTINCT text) FROM text_embeddings").fetchone()
    finally:
        con.close()
    return {"integrity_check": [r[0] for r in integrity], "rows": rows, "distinct_texts": texts}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_100k", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images to classify (in all)")
    ap.add_argument(
        "--bundle",
        default=None,
        help="tiny | fake | a bundle directory (default: tiny when torch and open_clip are installed, else fake)",
    )
    ap.add_argument("--broken-every", type=int, default=1000, help="every K-th file is a truncated JPEG (0: none)")
    ap.add_argument("--labels", default=LABELS, help="comma-separated labels (more labels: bigger records)")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="P > 1: split the images into P folders and run P classify processes at once, "
        "sharing one store and prompt cache (each adds a label of its own)",
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"default: {DEFAULT_OUT} (with --processes P: stream_Pproc.json beside it)",
    )
    args = ap.parse_args(argv)
    out_path = args.out or (DEFAULT_OUT if args.processes == 1 else RESULTS_DIR / f"stream_{args.processes}proc.json")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="clip-rt-stream-"))
    try:
        kind = args.bundle or default_bundle_kind()
        bundle, described = make_bundle(kind, work)
        env = {**os.environ, "CLIP_RT_HOME": str(work / "home")}
        t0 = time.perf_counter()
        if args.processes == 1:
            counts = make_images(work / "images", args.n, broken_every=args.broken_every)
        else:
            share = args.n // args.processes
            folders = [work / "images" / f"p{i}" for i in range(args.processes)]
            parts = [make_images(f, share, broken_every=args.broken_every, seed=i) for i, f in enumerate(folders)]
            counts = {k: sum(p[k] for p in parts) for k in parts[0]}
        gen_s = time.perf_counter() - t0
        print(
            f"{counts['images']} images generated in {gen_s:.1f} s; classifying with the {kind} bundle "
            f"in {args.processes} process(es)...",
            flush=True,
        )
        if args.processes == 1:
            result = run_stream(
                work / "images",
                bundle,
                work / "out.jsonl",
                labels=args.labels,
                batch_size=args.batch_size,
                threads=args.threads,
                env=env,
            )
        else:
            labels = [f"{args.labels},extra{i}" for i in range(args.processes)]
            result = run_parallel(
                folders, bundle, work, labels, batch_size=args.batch_size, threads=args.threads, env=env
            )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    from .common import machine_info

    report = {
        "benchmark": "stream_100k",
        "n": counts["images"],
        "bundle": described,
        **counts,
        "generate_s": round(gen_s, 2),
        **result,
        "rss_growth_definition": f"rss_end_mb - rss_after_1000_mb (first sample with >= "
        f"{BASELINE_RECORDS} records on disk)",
        "rerun": "python -m bench.stream_100k " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    keys = (
        "n",
        "records_written",
        "errors",
        "exit_code",
        "exit_codes",
        "wall_s",
        "images_per_s",
        "rss_start_mb",
        "rss_after_1000_mb",
        "rss_end_mb",
        "rss_max_mb",
        "rss_growth_mb",
        "rss_growth_mb_max",
        "cache",
    )
    print(json.dumps({k: report[k] for k in keys if k in report}, indent=2))
    print(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
