"""Inputs that cost memory (issue 11): peak RSS and wall time of the runtime on hostile inputs.

``python -m bench.memory_bounds [--out FILE] [--bundle DIR] [--limit-mb 3000]`` runs each case in a
child process under ``ulimit -v`` (RLIMIT_AS, so a blow-up fails instead of taking the machine)
and records its exit status, peak RSS (``os.wait4``: exact for that child), wall time and the
last stderr line, in ``bench/results/memory_bounds.json``:

- ``float_tiffs``: ``clip-rt classify`` of 4 names of one 9400x9400 float TIFF (deflate, 0.7 MB,
  353 MB decoded) and 3 small PNGs, fake bundle;
- ``video_12000``: ``clip-rt video`` of a 10-frame 12000x12000 MJPEG MKV (over the pixel limit);
- ``video_9000`` and ``video_9000_draft``: a 10-frame 9000x9000 MJPEG MKV (under the limit),
  without and with ``--draft``;
- ``text_50mb``: ``encode_text`` of one 50 MB text (``--bundle``: the ViT-B-32 CLIP tokenizer when
  given, else the fake bundle's), uncached, then the same text again from the cache;
- ``labels_50k``: the CLI's label parsing of a 50,000-line labels file (in-process timing).

To measure another checkout (e.g. the code before a change), run this file with
``PYTHONPATH=<that checkout>``: the children import ``clip_rt`` from the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

RESULTS = Path(__file__).resolve().parent / "results" / "memory_bounds.json"
CLI = "import sys; sys.argv[0] = 'clip-rt'; from clip_rt.cli import main; main()"


def measured(args: list[str], limit_mb: int, env: dict[str, str]) -> dict[str, Any]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    start = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit, env={**os.environ, **env}
    )
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    lines = [line for line in err.splitlines() if line.strip()]
    return {
        "exit": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - start, 2),
        "last_stderr_line": lines[-1][:300] if lines else "",
        "memory_error": "MemoryError" in err or "ArrayMemoryError" in err,
    }


def float_tiffs(folder: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("F", (9400, 9400), 0.25)
    ImageDraw.Draw(img).rectangle((1000, 1000, 5000, 7000), fill=0.75)
    img.save(folder / "big0.tif", compression="tiff_deflate")
    del img
    for i in range(1, 4):
        os.link(folder / "big0.tif", folder / f"big{i}.tif")
    for i in range(3):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(folder / f"small{i}.png")
    return folder


def mjpeg_video(path: Path, size: int, frames: int) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=2)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuvj420p"
        frame = av.VideoFrame(size, size, "yuvj420p")
        for i, plane in enumerate(frame.planes):
            plane.update(bytes([100 if i == 0 else 128]) * plane.buffer_size)
        frame.pts = 0
        data = b"".join(bytes(p) for p in stream.encode(frame)) + b"".join(bytes(p) for p in stream.encode())
        for k in range(frames):
            packet = av.Packet(data)
            packet.stream, packet.time_base = stream, Fraction(1, 2)
            packet.pts = packet.dts = k
            container.mux(packet)
    return path


def labels_50k(folder: Path) -> dict[str, Any]:
    from clip_rt.cli import common

    path = folder / "labels.txt"
    path.write_text("\n".join(f"class {i}" for i in range(50_000)))
    start = time.perf_counter()
    n = len(common.parse_labels(None, str(path)))
    return {"labels": n, "wall_s": round(time.perf_counter() - start, 3)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--bundle", type=Path, default=None, help="bundle for the 50 MB text (default: fake)")
    parser.add_argument("--limit-mb", type=int, default=3000, help="address-space limit of each child")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(argv)
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    results: dict[str, Any] = {"python_path": os.environ.get("PYTHONPATH", ""), "limit_mb": args.limit_mb, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="clip-rt-memory-") as tmp:
        work = Path(tmp)
        fake = build_fake_bundle(work / "fake-clip", precisions=("fp32",))
        env = {"CLIP_RT_HOME": str(work / "home")}
        want = set(args.only or ["float_tiffs", "video_12000", "video_9000", "text_50mb", "labels_50k"])
        cases = results["cases"]
        if "float_tiffs" in want:
            folder = float_tiffs(Path(tempfile.mkdtemp(dir=work)))
            cases["float_tiffs"] = measured(
                [
                    sys.executable,
                    "-c",
                    CLI,
                    "classify",
                    str(folder),
                    "-m",
                    str(fake),
                    "-l",
                    "cat,dog",
                    "-o",
                    str(work / "run.jsonl"),
                ],
                args.limit_mb,
                env,
            )
        if "video_12000" in want:
            video = mjpeg_video(work / "v12000.mkv", 12000, 10)
            cases["video_12000"] = measured(
                [sys.executable, "-c", CLI, "video", str(video), "-m", str(fake), "-l", "cat,dog"], args.limit_mb, env
            )
            video.unlink()
        if "video_9000" in want:
            video = mjpeg_video(work / "v9000.mkv", 9000, 10)
            for name, extra in (("video_9000", []), ("video_9000_draft", ["--draft"])):
                cases[name] = measured(
                    [sys.executable, "-c", CLI, "video", str(video), "-m", str(fake), "-l", "cat,dog", *extra],
                    args.limit_mb,
                    env,
                )
        if "text_50mb" in want:
            bundle = str(args.bundle or fake)
            code = (
                "import time, warnings, clip_rt; warnings.simplefilter('ignore')\n"
                f"m = clip_rt.load({bundle!r}, precision='fp32')\n"
                "text = 'a photo of a red cat on the sofa . ' * 1_450_000\n"  # 50.75 MB
                "t = time.perf_counter(); m.encode_text([text]); a = time.perf_counter() - t\n"
                "t = time.perf_counter(); m.encode_text([text]); b = time.perf_counter() - t\n"
                "import sys; print(f'uncached {a:.2f} s, cached {b:.3f} s', file=sys.stderr)"
            )
            cases["text_50mb"] = {"bundle": bundle, **measured([sys.executable, "-c", code], args.limit_mb, env)}
        if "labels_50k" in want:
            cases["labels_50k"] = labels_50k(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
