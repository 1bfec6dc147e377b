"""ANN candidates on a synthetic, CLIP-like embedding set: build time, memory, recall@10, latency.

The set (``make_dataset``): unit vectors in 512 dimensions, shaped like CLIP image embeddings
rather than uniform noise:

- an anisotropic spectrum: noise is drawn with per-direction scale ``(1 + i) ** -0.5`` in a
  random rotation (CLIP embeddings use few directions strongly, many weakly);
- a shared offset (``CONE``) every vector leans towards, so they sit in a cone (random pairs
  have a positive mean cosine, as CLIP's do);
- ``CLUSTERS`` cluster centres with Zipf-like sizes (a few large concepts, a long tail), and
  each vector is its centre plus noise.

Two query sets of 1000: *image-like* (drawn like the base, not in it) and *text-like*
(the same centres, shifted by a fixed "modality gap" vector, with more noise: their best
cosine to the base is far lower, as text-to-image queries are). Ground truth: exact
inner-product top-10. The statistics of the set (mean random-pair cosine, mean best-neighbour
cosine) are written beside the results, so what "clustered" meant is on record.

Each candidate runs in its own subprocess (``python -m bench.scale_ann one ...``) so that its
peak RSS is its own; the base vectors are read in 100k-row chunks with plain reads (no
mmap), so the RSS is the index's plus one chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np

DIM = 512
CLUSTERS = 2000
CONE = 1.2  # length of the shared offset relative to the unit-scale noise
CENTRE_SPREAD = 1.0
NOISE = 0.7
GAP = 4.5  # text-like queries: extra offset along a fixed direction (the "modality gap")
CHUNK = 100_000
N_QUERIES = 1000
K = 10


# -- the data set -------------------------------------------------------------------------
class _Generator:
    def __init__(self, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.basis = (q * ((1.0 + np.arange(dim)) ** -0.5)[None, :]).T.astype(np.float32)  # rows scaled
        self.basis *= np.sqrt(dim / float(np.sum((1.0 + np.arange(dim)) ** -1.0)))  # unit mean variance
        self.cone = _unit(rng.standard_normal(dim)).astype(np.float32) * CONE
        self.gap = _unit(rng.standard_normal(dim)).astype(np.float32)
        self.centres = self.cone[None, :] + CENTRE_SPREAD * self._shaped(rng, CLUSTERS) / np.sqrt(dim)
        weights = 1.0 / (np.arange(CLUSTERS) + 10.0)
        self.p = weights / weights.sum()

    def _shaped(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """*n* rows of anisotropic noise with squared norm about ``dim``."""
        return rng.standard_normal((n, self.dim), dtype=np.float32) @ self.basis

    def image_like(self, rng: np.random.Generator, n: int) -> np.ndarray:
        c = rng.choice(CLUSTERS, size=n, p=self.p)
        x = self.centres[c] + NOISE * self._shaped(rng, n) / np.sqrt(self.dim)
        return _unit_rows(x)

    def text_like(self, rng: np.random.Generator, n: int) -> np.ndarray:
        c = rng.choice(CLUSTERS, size=n, p=self.p)
        x = self.centres[c] + GAP * self.gap[None, :] + 1.5 * NOISE * self._shaped(rng, n) / np.sqrt(self.dim)
        return _unit_rows(x)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_dataset(work: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """base.f32 (n x DIM raw float32), queries_image.npy, queries_text.npy, gt_*.npy, stats.json."""
    work.mkdir(parents=True, exist_ok=True)
    stats_path = work / "stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats.get("n") == n and stats.get("seed") == seed:
            return stats
    gen = _Generator(DIM, seed)
    rng = np.random.default_rng(seed + 1)
    t0 = time.perf_counter()
    with open(work / "base.f32", "wb") as f:
        for start in range(0, n, CHUNK):
            f.write(gen.image_like(rng, min(CHUNK, n - start)).tobytes())
    qrng = np.random.default_rng(seed + 2)
    queries = {"image": gen.image_like(qrng, N_QUERIES), "text": gen.text_like(qrng, N_QUERIES)}
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gts = {name: exact_topk(work / "base.f32", n, q, K) for name, q in queries.items()}
    gt_s = time.perf_counter() - t0
    for name, q in queries.items():
        np.save(work / f"queries_{name}.npy", q)
        np.save(work / f"gt_{name}.npy", gts[name][0])
    # What the set looks like: random pairs and best neighbours.
    first = next(read_chunks(work / "base.f32", n, 20_000))
    pairs = np.einsum("ij,ij->i", first[:10_000], first[10_000:20_000])
    stats = {
        "n": n,
        "dim": DIM,
        "seed": seed,
        "clusters": CLUSTERS,
        "generate_s": round(gen_s, 1),
        "exact_ground_truth_s": round(gt_s, 1),
        "mean_cosine_random_pairs": round(float(pairs.mean()), 3),
        "image_queries": {
            "mean_top1_cosine": round(float(gts["image"][1][:, 0].mean()), 3),
            "mean_top10_cosine": round(float(gts["image"][1][:, -1].mean()), 3),
        },
        "text_queries": {
            "mean_top1_cosine": round(float(gts["text"][1][:, 0].mean()), 3),
            "mean_top10_cosine": round(float(gts["text"][1][:, -1].mean()), 3),
        },
    }
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def read_chunks(path: Path, n: int, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Rows of a raw float32 (n, DIM) file, *chunk* at a time, by plain reads (no mmap)."""
    with open(path, "rb") as f:
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            buf = np.empty((rows, DIM), dtype=np.float32)
            f.readinto(memoryview(buf).cast("B"))
            yield buf


def exact_topk(path: Path, n: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    offset = 0
    for rows in read_chunks(path, n):
        s = queries @ rows.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + offset], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        offset += len(rows)
    return best_i, best_s


# -- candidates ---------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Candidate:
    """build(chunks) / search(q, k, param) -> ids / save(path) / load(path)."""

    name = ""
    params: list[int] = []

    def build(self, chunks: Iterator[np.ndarray], n: int, threads: int) -> None: ...
    def search(self, q: np.ndarray, k: int, param: int) -> np.ndarray: ...
    def save(self, path: Path) -> None: ...
    def load(self, path: Path) -> None: ...


class FaissHNSW(Candidate):
    name, params = "faiss-hnsw-flat M16 efC128", [16, 32, 64, 128, 256, 512]

    def build(self, chunks, n, threads):  # noqa: ANN001, ANN201
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 128
        for rows in chunks:
            self.index.add(rows)
        faiss.omp_set_num_threads(1)

    def search(self, q, k, param):  # noqa: ANN001, ANN201
        self.index.hnsw.efSearch = param
        return self.index.search(q, k)[1]

    def save(self, path):  # noqa: ANN001, ANN201
        import faiss

        faiss.write_index(self.index, str(path))

    def load(self, path):  # noqa: ANN001, ANN201
        import faiss

        self.index = faiss.read_index(str(path))


class FaissIVF(Candidate):
    name, params = "faiss-ivf-flat nlist2048", [8, 16, 32, 64, 128]

    def build(self, chunks, n, threads):  # noqa: ANN001, ANN201
        import faiss

        faiss.omp_set_num_threads(threads)
        quant = faiss.IndexFlatIP(DIM)
        self.index = faiss.IndexIVFFlat(quant, DIM, 2048, faiss.METRIC_INNER_PRODUCT)
        first = True
        for rows in chunks:
            if first:  # train on the first 100k rows (the file is in random order)
                self.index.train(rows)
                first = False
            self.index.add(rows)
        faiss.omp_set_num_threads(1)

    def search(self, q, k, param):  # noqa: ANN001, ANN201
        self.index.nprobe = param
        return self.index.search(q, k)[1]

    save, load = FaissHNSW.save, FaissHNSW.load


class Hnswlib(Candidate):
    name, params = "hnswlib M16 efC128", [16, 32, 64, 128, 256, 512]

    def build(self, chunks, n, threads):  # noqa: ANN001, ANN201
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=DIM)
        self.index.init_index(max_elements=n, ef_construction=128, M=16)
        self.index.set_num_threads(threads)
        offset = 0
        for rows in chunks:
            self.index.add_items(rows, np.arange(offset, offset + len(rows)))
            offset += len(rows)
        self.index.set_num_threads(1)

    def search(self, q, k, param):  # noqa: ANN001, ANN201
        self.index.set_ef(max(param, k))
        return self.index.knn_query(q, k=k)[0]

    def save(self, path):  # noqa: ANN001, ANN201
        self.index.save_index(str(path))

    def load(self, path):  # noqa: ANN001, ANN201
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=DIM)
        self.index.load_index(str(path))
        self.index.set_num_threads(1)


class Usearch(Candidate):
    params = [16, 32, 64, 128, 256, 512]

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.name = f"usearch-hnsw {dtype} M16 efC128"

    def build(self, chunks, n, threads):  # noqa: ANN001, ANN201
        from usearch.index import Index

        self.index = Index(ndim=DIM, metric="ip", dtype=self.dtype, connectivity=16, expansion_add=128)
        offset = 0
        for rows in chunks:
            self.index.add(np.arange(offset, offset + len(rows), dtype=np.uint64), rows, threads=threads)
            offset += len(rows)

    def search(self, q, k, param):  # noqa: ANN001, ANN201
        self.index.expansion_search = param
        return self.index.search(q, k, threads=1).keys

    def save(self, path):  # noqa: ANN001, ANN201
        self.index.save(str(path))

    def load(self, path):  # noqa: ANN001, ANN201
        from usearch.index import Index

        self.index = Index.restore(str(path), view=True)  # memory-mapped: opening costs no read


CANDIDATES: dict[str, Callable[[], Candidate]] = {
    "faiss-hnsw": FaissHNSW,
    "faiss-ivf": FaissIVF,
    "hnswlib": Hnswlib,
    "usearch-f32": lambda: Usearch("f32"),
    "usearch-f16": lambda: Usearch("f16"),
    "usearch-i8": lambda: Usearch("i8"),
}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def run_one(key: str, work: Path, n: int, threads: int) -> dict[str, Any]:
    cand = CANDIDATES[key]()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    cand.build(read_chunks(work / "base.f32", n), n, threads)
    build_s = time.perf_counter() - t0
    rss_built = _rss_mb()
    peak_build = _peak_mb()
    path = work / f"index-{key}.bin"
    cand.save(path)
    size_mb = path.stat().st_size / 2**20
    del cand.index
    t0 = time.perf_counter()
    cand.load(path)
    open_s = time.perf_counter() - t0
    rows = []
    for param in cand.params:
        row: dict[str, Any] = {"param": param}
        for qname in ("image", "text"):
            q = np.load(work / f"queries_{qname}.npy")
            gt = np.load(work / f"gt_{qname}.npy")
            cand.search(q[:20], K, param)  # warm-up
            times, found = [], []
            for i in range(len(q)):
                t = time.perf_counter()
                ids = cand.search(q[i : i + 1], K, param)
                times.append(time.perf_counter() - t)
                found.append(np.asarray(ids).reshape(-1)[:K])
            row[f"recall10_{qname}"] = round(recall_at_k(np.array(found), gt), 4)
            row[f"latency_ms_median_{qname}"] = round(statistics.median(times) * 1e3, 3)
            row[f"latency_ms_p95_{qname}"] = round(float(np.percentile(times, 95)) * 1e3, 3)
        rows.append(row)
    path.unlink()
    return {
        "candidate": cand.name,
        "key": key,
        "n": n,
        "build_threads": threads,
        "build_s": round(build_s, 1),
        "rss_before_build_mb": round(rss0),
        "rss_after_build_mb": round(rss_built),
        "peak_rss_build_mb": round(peak_build),
        "index_file_mb": round(size_mb),
        "open_s": round(open_s, 3),
        "search": rows,
    }


def run_all(work: Path, n: int, keys: list[str], threads: int, timeout_s: int = 3600) -> list[dict[str, Any]]:
    out = []
    for key in keys:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.scale_ann",
                "one",
                key,
                "--work",
                str(work),
                "--n",
                str(n),
                "--threads",
                str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            out.append({"key": key, "error": proc.stderr[-2000:]})
        else:
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[ann] {key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale_ann")
    ap.add_argument("what", choices=["data", "one", "all"])
    ap.add_argument("key", nargs="?")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keys", nargs="+", default=list(CANDIDATES))
    args = ap.parse_args(argv)
    if args.what == "data":
        print(json.dumps(make_dataset(args.work, args.n), indent=2))
    elif args.what == "one":
        print(json.dumps(run_one(args.key, args.work, args.n, args.threads)))
    else:
        make_dataset(args.work, args.n)
        print(json.dumps(run_all(args.work, args.n, args.keys, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
