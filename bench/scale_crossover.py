"""Exact search against clip-rt's ANN index (clip_rt.outputs.ann, its default spec) as the
collection grows: where the ANN index starts to pay.

For each size N (a prefix of the synthetic set of bench/scale_ann.py, regenerated here):
exact search time per query (vectors in memory: ``vectors @ q`` + top-10), and the one-off
cost a ``clip-rt search`` process pays to get the vectors (``np.load`` of the .npy, warm page
cache); the ANN index's build time, open time (memory-mapped ``faiss.read_index``), per-query
time and recall@10 against exact, for image-like and text-like queries.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import scale_ann


def _median_ms(fn: Any, queries: np.ndarray) -> tuple[float, list[Any]]:
    out, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3), out


def run(work: Path, sizes: list[int], n_queries: int = 200, exact_only: tuple[int, ...] = ()) -> dict[str, Any]:
    import faiss

    from clip_rt.outputs import ann

    work.mkdir(parents=True, exist_ok=True)
    gen = scale_ann._Generator(scale_ann.DIM, 0)
    rng = np.random.default_rng(1)
    top = max([*sizes, *exact_only])
    base = np.concatenate([gen.image_like(rng, min(100_000, top - s)) for s in range(0, top, 100_000)])
    qrng = np.random.default_rng(2)
    queries = {"image": gen.image_like(qrng, n_queries), "text": gen.text_like(qrng, n_queries)}
    spec = ann.DEFAULT_SPEC
    rows = []
    for n in sizes:
        vecs = np.ascontiguousarray(base[:n])
        npy = work / "vectors.npy"
        np.save(npy, vecs)
        np.load(npy)  # warm the page cache, as for a repeated search
        t0 = time.perf_counter()
        np.load(npy)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = ann.build_index(lambda v=vecs: iter([v]), n, scale_ann.DIM, spec)
        build_s = time.perf_counter() - t0
        path = work / "ann.faiss"
        faiss.write_index(index, str(path))
        t0 = time.perf_counter()
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        open_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParametersIVF(nprobe=spec.nprobe)
        row: dict[str, Any] = {
            "n": n,
            "npy_load_s": round(load_s, 3),
            "ann_build_s": round(build_s, 1),
            "ann_open_s": round(open_s, 3),
            "ann_file_mb": round(path.stat().st_size / 2**20),
        }
        for name, q in queries.items():
            exact_ms, truth = _median_ms(lambda v: ann.exact_search(vecs, v, 10)[1], q)
            ann_ms, found = _median_ms(lambda v: index.search(v.reshape(1, -1), 10, params=params)[1][0], q)
            row[f"exact_ms_{name}"] = exact_ms
            row[f"ann_ms_{name}"] = ann_ms
            row[f"recall10_{name}"] = round(scale_ann.recall_at_k(np.array(found), np.array(truth)), 4)
        # A one-off `clip-rt search`: exact needs the vectors loaded; ANN opens its index.
        row["one_off_exact_ms"] = round(load_s * 1e3 + row["exact_ms_text"], 1)
        row["one_off_ann_ms"] = round(open_s * 1e3 + row["ann_ms_text"], 1)
        rows.append(row)
        path.unlink()
        npy.unlink()
        print(row, flush=True)
    for n in exact_only:  # the exact side only (the ANN side at this size: the "ann" section)
        vecs = base[:n]
        row = {"n": n, "exact_only": True}
        for name, q in queries.items():
            row[f"exact_ms_{name}"], _ = _median_ms(lambda v: ann.exact_search(vecs, v, 10)[1], q)
        rows.append(row)
        print(row, flush=True)
    return {
        "spec": {
            "nprobe": spec.nprobe,
            "rows_per_list": spec.rows_per_list,
            "max_train": spec.max_train,
            "factories": {n: spec.factory(n) for n in sizes},
        },
        "queries_per_set": n_queries,
        "rows": rows,
        "method": __doc__.strip(),
    }
