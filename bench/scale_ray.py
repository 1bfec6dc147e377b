"""``clip-rt ray embed`` on a local Ray (1 and 2 actors) against ``clip-rt index``, same folder,
same run; Ray's own cost (start-up, memory per actor); shared path vs shipped bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import log


def _photos(folder: Path, n: int) -> list[Path]:
    from clip_rt_fixtures.photos import make_jpegs

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return sorted(folder.glob("*.jpg"))
    shutil.rmtree(folder, ignore_errors=True)
    return make_jpegs(folder, n, megapixels=0.5, seed=0)


class _RssSampler:
    """Peak RSS of Ray's processes by kind, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            totals: dict[str, float] = {}
            for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                mem = p.info["memory_info"]
                if mem is None:
                    continue
                if "MapWorker" in cmd or "MapWorker" in (p.info["name"] or ""):
                    kind = "actor"
                    self.peak["one_actor_mb"] = max(self.peak.get("one_actor_mb", 0), mem.rss / 2**20)
                elif "ray" in cmd and p.pid != os.getpid():
                    kind = "ray_other"
                else:
                    continue
                totals[kind] = totals.get(kind, 0) + mem.rss / 2**20
            for k, v in totals.items():
                self.peak[k + "_total_mb"] = max(self.peak.get(k + "_total_mb", 0), v)
            self._stop.wait(0.2)


def _cli_index(bundle: str, photos: Path, out: Path, env: dict[str, str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("clip-rt")
    t0 = time.perf_counter()
    subprocess.run(
        [str(exe), "index", str(photos), "-o", str(out), "-m", bundle, "--precision", "fp32"],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - t0


def run(work: Path, *, bundle: str, images: int, actors: list[int]) -> dict[str, Any]:
    import json

    from clip_rt.inputs.discover import path_key
    from clip_rt.scale import parts
    from clip_rt.scale import ray as crt_ray

    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    os.environ["CLIP_RT_HOME"] = str(home)
    env = {**os.environ}
    photos = _photos(work / "photos", images)
    n = len(photos)
    log(f"{n} photos; CLI first")
    result: dict[str, Any] = {"images": n, "bundle": bundle, "precision": "fp32", "photo_megapixels": 0.5}
    cli_s = [_cli_index(bundle, work / "photos", work / "idx", env)]
    t0 = time.perf_counter()
    crt_ray.init(num_cpus=os.cpu_count())
    result["ray_init_s"] = round(time.perf_counter() - t0, 2)
    with _RssSampler() as idle:
        time.sleep(2)
    result["ray_idle_rss_mb"] = {k: round(v) for k, v in idle.peak.items()}
    runs = []
    try:
        for ship in (False, True):
            for a in actors if not ship else [1]:
                out = work / f"out-{a}-{int(ship)}"
                shutil.rmtree(out, ignore_errors=True)
                with _RssSampler() as rss:
                    t0 = time.perf_counter()
                    res = crt_ray.run_job(
                        [str(work / "photos")], out, bundle, precision="fp32", actors=a, part_rows=64, ship_bundle=ship
                    )
                    wall = time.perf_counter() - t0
                runs.append(
                    {
                        "actors": a,
                        "ship_bundle": ship,
                        "wall_s": round(wall, 2),
                        "images_per_s": round(n / wall, 2),
                        "rows": res["rows"],
                        "rss_peak_mb": {k: round(v) for k, v in rss.peak.items()},
                    }
                )
                log(f"ray actors={a} ship={ship}: {wall:.1f} s")
    finally:
        crt_ray.shutdown()
    cli_s.append(_cli_index(bundle, work / "photos", work / "idx", env))
    result["cli_index_wall_s"] = [round(x, 2) for x in cli_s]
    result["cli_images_per_s"] = round(n / min(cli_s), 2)
    result["ray_runs"] = runs
    for r in runs:
        r["vs_cli_best"] = round(r["images_per_s"] / result["cli_images_per_s"], 3)
    # Same embeddings as the CLI: the largest difference over every image.
    meta = json.loads((work / "idx" / "index.json").read_text())
    cli = np.load(work / "idx" / meta["embeddings"])
    want = {path_key(os.path.join(meta["root"], e["path"])): cli[i] for i, e in enumerate(meta["entries"])}
    diffs = []
    for r in runs:
        table = parts.read_table(str(work / f"out-{r['actors']}-{int(r['ship_bundle'])}"), ["path", "embedding"])
        for path, emb in zip(table.column("path").to_pylist(), table.column("embedding").to_pylist()):
            diffs.append(float(np.abs(np.asarray(emb, np.float32) - want[path]).max()))
    result["max_abs_diff_vs_cli"] = max(diffs)
    result["exactly_equal_rows"] = int(sum(d == 0.0 for d in diffs))
    result["compared_rows"] = len(diffs)
    return result
