"""How large `classify --report` gets at 10,000 images: report.html, the thumbnails folder beside
it, the rest of the report, and the peak memory of writing it.

    python -m bench.report_size                  # 10,000 photos (about 0.3 MP each) in bench/work/
    python -m bench.report_size --images 500     # a quick look

The images are scikit-image's photographs (bench/photos.py: random crops and mirrors, JPEG), so
the thumbnails compress as photos do, not as flat test colours. The records are made up (random
classes and scores): the page's size depends on the images and their number, not on a model.
Writes bench/results/report_size.json (sizes are exact; no timings: the host is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import RESULTS_DIR

WORK = Path(__file__).resolve().parent / "work"


def _folder_bytes(folder: Path) -> tuple[int, int, int]:
    """(files, their bytes, the disk blocks they take in bytes)."""
    files = size = blocks = 0
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            files += 1
            size += st.st_size
            blocks += st.st_blocks * 512
    return files, size, blocks


def measure(images: int, megapixels: float, work: Path, seed: int = 0) -> dict[str, Any]:
    from clip_rt.outputs import thumbnails
    from clip_rt.outputs.records import Record
    from clip_rt.outputs.report import write_report
    from clip_rt_fixtures.photos import PHOTOS, make_jpegs

    photos = make_jpegs(work / f"report-photos-{megapixels:g}mp", images, megapixels=megapixels, seed=seed)
    labels = sorted(set(PHOTOS.values())) + ["dog", "car", "tree", "building"]
    rng = np.random.default_rng(seed)
    records = []
    for p in photos:
        scores = rng.dirichlet(np.full(len(labels), 0.3))
        top = int(np.argmax(scores))
        with open(p, "rb") as f:  # sizes from the header, as a run records them
            from PIL import Image

            with Image.open(f) as im:
                w, h = im.size
        records.append(
            Record(
                str(p),
                labels[top],
                round(float(scores[top]), 6),
                {lab: round(float(s), 6) for lab, s in zip(labels, scores)},
                w,
                h,
            )
        )
    rep = work / f"report-{images}"
    shutil.rmtree(rep, ignore_errors=True)
    write_report(records, str(rep), labels)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    files, thumb_bytes, thumb_disk = _folder_bytes(rep / thumbnails.FOLDER)
    everything = _folder_bytes(rep)
    sources = sum(p.stat().st_size for p in photos)
    return {
        "command": " ".join(["python -m bench.report_size", *sys.argv[1:]]),
        "images": images,
        "source_megapixels": megapixels,
        "source_bytes": sources,
        "thumbnail_size_px": thumbnails.THUMBNAIL_SIZE,
        "jpeg_quality": thumbnails.JPEG_QUALITY,
        "report_html_bytes": (rep / "report.html").stat().st_size,
        "thumbnail_files": files - 1,  # less the marker file
        "thumbnails_bytes": thumb_bytes,
        "thumbnails_disk_bytes": thumb_disk,
        "thumbnail_mean_bytes": round(thumb_bytes / max(1, files - 1)),
        "report_folder_bytes": everything[1],
        "report_folder_disk_bytes": everything[2],
        "other_files": {p.name: p.stat().st_size for p in sorted(rep.iterdir()) if p.is_file()},
        "peak_rss_bytes": peak_rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--megapixels", type=float, default=0.3)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--no-save", action="store_true", help="print only; do not write results/report_size.json")
    args = ap.parse_args()
    os.environ.setdefault("CLIP_RT_HOME", str(args.work / "home"))
    result = measure(args.images, args.megapixels, args.work)
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_save:
        (RESULTS_DIR / "report_size.json").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
