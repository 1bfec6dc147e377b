"""``python -m bench.readme [--check]``: the measured tables of README.md and docs/ from bench/results.

Every table a user reads is generated from the result files, so the pages cannot drift from what
was measured. A page marks each table with a pair of comments::

    <!-- generated: NAME -->
    ...(rewritten by this module)...
    <!-- end generated -->

where NAME is one of :data:`SECTIONS`, one function per table. ``python -m bench.readme``
rewrites every marked section of README.md and docs/**/*.md; ``--check`` rewrites nothing and
exits 1 naming the stale files (tests/test_readme.py runs it, so a changed result file without
regenerated pages fails the tests).

Which result a table shows: the file named in its function, or, where several runs of one
benchmark are kept (``backends-*.json``), the newest of the kind the table is about. The dated
list of every run is the ``history`` section (docs/benchmarks/history.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .common import BENCH_DIR, RESULTS_DIR

ROOT = BENCH_DIR.parent
MARKER = re.compile(r"<!-- generated: ([a-z0-9_-]+) -->\n(.*?)<!-- end generated -->", re.DOTALL)
OPEN_MARKER = re.compile(r"<!-- generated: ([^ ]*) -->")

Json = dict[str, Any]


class ResultsError(Exception):
    """A result file a table needs is missing or lacks a field."""


@dataclass
class Results:
    """The result files of one folder, read on first use."""

    folder: Path

    def __post_init__(self) -> None:
        self._cache: dict[str, Json] = {}

    def get(self, name: str) -> Json:
        if name not in self._cache:
            path = self.folder / f"{name}.json"
            try:
                self._cache[name] = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ResultsError(f"{path}: missing (a generated table needs it)") from None
        return self._cache[name]

    def names(self, pattern: str = "*.json") -> list[str]:
        """Result names (file paths under the folder without ``.json``), subfolders included
        for ``**`` patterns."""
        return sorted(p.relative_to(self.folder).with_suffix("").as_posix() for p in self.folder.glob(pattern))

    def newest(self, pattern: str, keep: Callable[[Json], bool]) -> tuple[str, Json]:
        """The newest (by ``when``) result file matching *pattern* that *keep* accepts."""
        found = [(self.get(n).get("when", ""), n) for n in self.names(pattern) if keep(self.get(n))]
        if not found:
            raise ResultsError(f"{self.folder}: no {pattern} result of the kind a table needs")
        name = max(found)[1]
        return name, self.get(name)


# -- formatting ------------------------------------------------------------------------------
def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: Optional[float], digits: int = 3) -> str:
    """*value* with *digits* significant digits, no exponent for ordinary sizes."""
    if value is None:
        return "not measured"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def ratio(value: Optional[float]) -> str:
    return "not measured" if value is None else f"{value:.2f}x"


def isa_class(machine: Json) -> str:
    """The short name of a result's CPU class, for a table column."""
    isa = set(machine.get("isa") or [])
    if "amx_int8" in isa:
        return "AVX-512 VNNI (AMX hidden)" if machine.get("onednn_max_cpu_isa") else "AMX"
    return "AVX-512 VNNI" if "avx512_vnni" in isa else ("AVX2" if "avx2" in isa else "other")


def host(machine: Json) -> str:
    """The CPU a result ran on, by the instruction sets that decide its speed."""
    isa = set(machine.get("isa") or [])
    hidden = machine.get("onednn_max_cpu_isa")
    if "amx_int8" in isa and not hidden:
        kind = "AMX (amx_int8, amx_bf16)"
    elif "amx_int8" in isa:
        kind = f"AMX hidden from oneDNN ({hidden}): AVX-512 VNNI for PyTorch and OpenVINO"
    elif "avx512_vnni" in isa:
        kind = "AVX-512 VNNI, no AMX"
    elif "avx2" in isa:
        kind = "AVX2"
    else:
        kind = ", ".join(sorted(isa)) or "ISA not recorded"
    cores = machine.get("cpu_count")
    model = (machine.get("cpu_model") or "x86-64").replace("(R)", "")
    return f"{model}, {cores} cores, {kind}" if cores else f"{model}, {kind}"


_ABSOLUTE = re.compile(r"(?<![\w.])/[^\s=]+")


def public_command(command: str) -> str:
    """A result's command as a user would type it: the project's lock wrapper dropped,
    absolute paths of the machine it ran on replaced by ``PATH``."""
    command = re.sub(r"^flock \S+ ", "", command.strip())
    command = re.sub(r"^python3 ", "python ", command)
    return _ABSOLUTE.sub("PATH", command)


def source(name: str, result: Json) -> str:
    """The line under a table: where its figures come from and how to measure them again."""
    return (
        f"From `bench/results/{name}.json`: `{public_command(result.get('command', '?'))}` on "
        f"{host(result.get('machine') or {})}."
    )


# -- the tables --------------------------------------------------------------------------------
def _newest_backends(results: Results, isa_class: str) -> tuple[str, Json]:
    return results.newest(
        "backends-*.json", lambda r: r.get("isa_class") == isa_class and "goals" in r and not r.get("env")
    )


def _goal(run: Json, starts: str, contains: str = "") -> Json:
    for goal in run.get("goals", []):
        if goal["target"].startswith(starts) and contains in goal["target"]:
            return goal
    raise ResultsError(f"no goal '{starts}...{contains}' in the backends result")


def _best(speed: Json, key: str) -> Optional[float]:
    row = speed.get(key)
    return None if row is None else row.get("items_per_s_best")


def _describe_candidate(name: str) -> str:
    """``openvino int8-static-nncf bf16 [throughput]`` as words."""
    backend, _, rest = name.partition(" ")
    mode = ""
    if "[" in rest:
        rest, mode = rest.split("[", 1)
        mode = ", " + mode.rstrip("]").replace("1-image requests", "one-image requests")
    parts = rest.split()
    graph = {"int8-static-nncf": "int8 (NNCF)", "int8-static": "int8 (static)", "fp32": "fp32"}.get(parts[0], parts[0])
    hint = f", {parts[1]} compute" if len(parts) > 1 and parts[1] != "f32" else ""
    return f"{'OpenVINO' if backend == 'openvino' else backend} {graph}{hint}{mode}"


PEER_ROWS = (
    "clip-rt default",
    "clip-rt int8 (onnxruntime)",
    "fastembed fp32",
    "fastembed int8",
    "onnx_clip fp32",
    "open_clip fp32 (torch)",
    "open_clip bf16 (torch)",
)


def _peer_speed(block: Json, name: str, key: str) -> str:
    """Median (best) of one runtime in one of bench.peers' speed blocks; the runtime's row at
    its own default batch where the block has several."""
    rows = block["rows"]
    row = rows.get(f"{name}, default batch") or rows.get(name) or rows.get(f"{name}, batch 8")
    if row is None:
        return "-"
    return f"{num(row['median_' + key])} ({num(row['best_' + key])})"


def _peer_parity(row: Json) -> str:
    """How a runtime's embeddings differ from clip-rt fp32's, and why, in a few words."""
    image, text = row.get("image", {}), row.get("text", {})
    if not image:
        return "-"
    said = f"image {num(image['min_cosine'], 5)}, text {num(text.get('min_cosine'), 5)}"
    pixels = row.get("pixels", {})
    if pixels.get("images_differing"):
        said += f"; {pixels['images_differing']} of {pixels['images']} photos cropped 1 px off"
    tokens = row.get("tokens", {})
    if tokens.get("prompts_differing"):
        said += f"; {tokens['prompts_differing']} prompts tokenised differently"
    return said


def peers(results: Results) -> str:
    """clip-rt beside fastembed, onnx_clip and open_clip on the same model and photos
    (``python -m bench.peers``): speed medians with best samples in brackets, a fresh process's
    peak memory, and how each peer's embeddings differ from clip-rt fp32."""
    run = results.get("peers")
    speed, memory, parity = run["speed"], run["memory"]["rows"], run["parity"]["rows"]
    images = speed["images"]
    rows = []
    for name in PEER_ROWS:
        if name not in parity and name not in memory:
            continue
        mem = memory.get(name, {})
        rows.append(
            [
                f"**{name}**" if name == "clip-rt default" else name,
                _peer_speed(images, name, "images_per_s"),
                _peer_speed(speed["text"], name, "prompts_per_s"),
                _peer_speed(speed["one_photo"], name, "ms"),
                f"{num(mem['peak_rss_mb'])}" if mem else "-",
                "reference (fp32)" if name.startswith("clip-rt fp32") else _peer_parity(parity.get(name, {})),
            ]
        )
    v = run["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("fastembed", "onnx_clip", "open_clip_torch", "torch") if k in v)
    return "\n".join(
        [
            table(
                [
                    f"ViT-B/32, random weights ({run['machine'].get('cpu_count')} threads)",
                    f"images/s ({images['images_per_call']} JPEGs of 6 MP, decoding included)",
                    "prompts/s (80 new)",
                    "one photo, ms",
                    "peak RSS, MB (fresh process)",
                    "min cosine vs clip-rt fp32",
                ],
                rows,
            ),
            "",
            f"Medians (best in brackets) of rounds in rotating order in one process; {versions}. "
            f"{source('peers', run)}",
        ]
    )


def jobs(results: Results) -> str:
    """The job a user runs (``python -m bench.jobs``): a fresh `clip-rt classify` process per size,
    the default against each backend forced, wall time and peak memory."""
    blocks = []
    for name in results.names("jobs-*.json"):
        run = results.get(name)
        sizes = sorted({r["images"] for r in run["rows"]})
        backends = [b for b in ("auto", "onnxruntime", "openvino") if any(r["backend"] == b for r in run["rows"])]
        rows = []
        for n in sizes:
            line = [f"{n} photo{'s' if n != 1 else ''}"]
            for b in backends:
                r = next((r for r in run["rows"] if r["images"] == n and r["backend"] == b), None)
                line.append("-" if r is None else f"{num(r['wall_s_median'])} s, {num(r['peak_rss_mb_median'])} MB")
            summary = next((s for s in run["summary"] if s["images"] == n), None)
            if summary:
                ran = summary["default_ran"]
                line.append(f"{ran['image']}" + ("" if ran["text"] == ran["image"] else f" / text {ran['text']}"))
                line.append(f"{summary['default_vs_fastest']:.2f}x")
            rows.append(line)
        header = [
            "`clip-rt classify`, 5 labels",
            *("default" if b == "auto" else f"`--backend {b}`" for b in backends),
            "the default ran",
            "default / fastest",
        ]
        blocks.append(
            "\n".join(
                [
                    table(header, rows),
                    "",
                    f"Medians of {run['rows'][0]['rounds']} fresh processes per cell in rotating order "
                    f"(wall time, peak RSS), warm caches, new labels every run. "
                    f"{source(name, run)}",
                ]
            )
        )
    if not blocks:
        raise ResultsError(f"{results.folder}: no jobs-*.json result (python -m bench.jobs)")
    return "\n\n".join(blocks)


STEADY_GOALS = (
    "image batch 8 >= 6x torch fp32",
    "image batch 8 >= 2x torch bf16",
    "text batch 80 prompts >= 25x open_clip",
    "image batch 8 >= 3x torch fp32",
)


def goals(results: Results) -> str:
    """The steady-state speed goals on each CPU class's newest backends run, judged on the
    medians of its rounds (best samples beside them): met, or by how much they are missed."""
    rows = []
    for isa in ("x86-amx", "x86-avx512-vnni"):
        try:
            name, run = _newest_backends(results, isa)
        except ResultsError:
            continue
        for g in run.get("goals", []):
            if not g["target"].startswith(STEADY_GOALS) or g.get("measured_medians") is None:
                continue
            median, goal = g["measured_medians"], g["goal"]
            verdict = "met" if median >= goal else f"missed by {100 * (1 - median / goal):.0f}%"
            rows.append(
                [
                    isa_class(run["machine"]),
                    g["target"],
                    _describe_candidate(g["candidate"]),
                    f"{median:.2f}x",
                    f"{g['measured']:.2f}x",
                    verdict,
                    f"`{name}.json`",
                ]
            )
    if not rows:
        raise ResultsError(f"{results.folder}: no backends run with goals")
    return "\n".join(
        [
            table(
                ["CPU", "goal", "clip-rt candidate", "median of rounds", "best samples", "on medians", "result file"],
                rows,
            ),
            "",
            "Each ratio is clip-rt over PyTorch in the same process, rounds in rotating order "
            "(`python -m bench.backends`).",
        ]
    )


def encoders(results: Results) -> str:
    """clip-rt against open_clip in PyTorch, one row per workload, from the results that exist:
    the runtime's own choice on the AMX host (the newest ``backends`` run), the end-to-end folder
    and the cold start. Best samples, the per-round median ratio in brackets."""
    name, run = _newest_backends(results, "x86-amx")
    rows = []
    image8, image1 = run["image"]["speed"]["8"], run["image"]["speed"]["1"]
    for label, goal, speed in (
        ("image encoder, batch of 8", _goal(run, "image batch 8", "torch fp32"), image8),
        ("image encoder, one image per call", _goal(run, "image batch 1", "one call"), image1),
    ):
        fp32, bf16 = _best(speed, "torch fp32"), _best(speed, "torch bf16")
        mine = goal["items_per_s"]
        rows.append(
            [
                label,
                f"{num(mine)} images/s: {_describe_candidate(goal['candidate'])}",
                f"fp32 {num(fp32)}, bf16 {num(bf16)} images/s",
                f"{ratio(mine / fp32 if fp32 else None)} fp32, {ratio(mine / bf16 if bf16 else None)} bf16",
                isa_class(run["machine"]),
            ]
        )
    text_goal = _goal(run, "text", "open_clip")
    text = run["text"]["speed"]["80"]
    oc, bf16_trim = _best(text, "open_clip fp32 (context 77)"), _best(text, "torch bf16 trimmed")
    mine = text_goal["items_per_s"]
    rows.append(
        [
            "text encoder, 80 prompts",
            f"{num(mine)} prompts/s: {_describe_candidate(text_goal['candidate'])}",
            f"open_clip `encode_text` {num(oc)}; bf16 on trimmed prompts {num(bf16_trim)} prompts/s",
            f"{ratio(mine / oc if oc else None)} open_clip, {ratio(mine / bf16_trim if bf16_trim else None)} "
            "bf16 trimmed",
            isa_class(run["machine"]),
        ]
    )
    e2e = results.get("end_to_end")
    fast = e2e["rows"]["clip-rt int8 tuned, draft"]
    origin = e2e["rows"]["origin loop (open_clip fp32)"]
    rows.append(
        [
            f"classify a folder: {e2e['images']} photos of {e2e['megapixels']:g} MP, {e2e['labels']} labels, "
            "decoding included",
            f"{num(fast['images_per_s'])} images/s (int8, `--draft`)",
            f"{num(origin['images_per_s'])} images/s (fp32, one image at a time)",
            f"{ratio(fast['x_origin'])} (median)",
            isa_class(e2e["machine"]),
        ]
    )
    start = results.get("startup")
    cold = start["median"]["int8 tuned: first run (empty CLIP_RT_HOME)"]
    rows.append(
        [
            "cold start: a new process classifies one photo",
            f"{num(cold['process_wall_s'])} s, peak RSS {num(cold['maxrss_mb'])} MB (int8, nothing cached yet)",
            "not measured",
            "",
            isa_class(start["machine"]),
        ]
    )
    cpus = sorted({host(v["machine"]) for v in (run, e2e, start)})
    return "\n".join(
        [
            table(["ViT-B/32, random weights", "clip-rt", "open_clip in PyTorch", "clip-rt vs PyTorch", "CPU"], rows),
            "",
            f"Best samples of runs side by side in one process (the folder: medians), on {' and '.join(cpus)}. "
            f"From `bench/results/`: `{name}.json`, `end_to_end.json`, `startup.json`.",
        ]
    )


def backends(results: Results) -> str:
    """Every candidate of the newest backends run per CPU class: what the runtime chose from."""
    parts = []
    for isa_class, title in (("x86-amx", "AMX"), ("x86-amx-as-vnni", "AMX hidden from oneDNN (as AVX-512 VNNI)")):
        try:
            name, run = results.newest(
                "backends-*.json", lambda r, c=isa_class: r.get("isa_class") == c and "goals" in r
            )
        except ResultsError:
            continue
        for batch, unit in (("8", "batch of 8"), ("1", "one image per call")):
            speed = run["image"]["speed"].get(batch)
            if not speed:
                continue
            fp32, bf16 = _best(speed, "torch fp32"), _best(speed, "torch bf16")
            rows = sorted(((k, v) for k, v in speed.items()), key=lambda kv: -(kv[1].get("items_per_s_best") or 0))
            parts += [
                f"**{title}, image encoder, {unit}** (images/s, best sample; median in brackets)",
                "",
                table(
                    ["candidate", "images/s", "x torch fp32", "x torch bf16"],
                    [
                        [
                            k,
                            f"{num(v['items_per_s_best'])} ({num(v['items_per_s_median'])})",
                            ratio(v["items_per_s_best"] / fp32 if fp32 else None),
                            ratio(v["items_per_s_best"] / bf16 if bf16 else None),
                        ]
                        for k, v in rows
                    ],
                ),
                "",
            ]
        text = run.get("text", {}).get("speed", {}).get("80")
        if text:
            oc = _best(text, "open_clip fp32 (context 77)")
            rows = sorted(text.items(), key=lambda kv: -(kv[1].get("items_per_s_best") or 0))
            parts += [
                f"**{title}, text encoder, 80 prompts** (prompts/s, best sample; median in brackets; "
                f"prompts trimmed to {run['text'].get('tokens', '?')} tokens except open_clip's)",
                "",
                table(
                    ["candidate", "prompts/s", "x open_clip"],
                    [
                        [
                            k,
                            f"{num(v['items_per_s_best'])} ({num(v['items_per_s_median'])})",
                            ratio(v["items_per_s_best"] / oc if oc else None),
                        ]
                        for k, v in rows
                    ],
                ),
                "",
            ]
        parts += [source(name, run), ""]
    return "\n".join(parts).rstrip()


def end_to_end(results: Results) -> str:
    """Classifying a folder of multi-megapixel JPEGs, decoding included, against open_clip's loop."""
    r = results.get("end_to_end")
    rows = [
        [k, num(v["median_s"]), num(v["images_per_s"]), ratio(v["x_origin"]), f"{v['top1_same_as_origin']:.0%}"]
        for k, v in r["rows"].items()
    ]
    d = r["draft_effect"]
    return "\n".join(
        [
            table(["pipeline", "seconds (median)", "images/s", "x open_clip loop", "same top-1 as open_clip"], rows),
            "",
            f"{r['images']} JPEGs of {r['megapixels']:g} MP, {r['labels']} labels x the {r['templates']} templates. "
            f"`--draft` changed pixels by at most {num(d['max_abs_diff_levels'])} levels of 255 (mean "
            f"{num(d['mean_abs_diff_levels'])}) and kept every top-1 label "
            f"({d['top1_draft_vs_full_decode']:.0%}). " + source("end_to_end", r),
        ]
    )


def startup(results: Results) -> str:
    """Cold start and peak memory of one classify process."""
    r = results.get("startup")
    rows = [[k, num(v["process_wall_s"]), num(v["maxrss_mb"])] for k, v in r["median"].items()]
    rows += [
        [f"{k}: {v['images']} photos", num(v["process_wall_s"]), num(v["maxrss_mb"])] for k, v in r["folder"].items()
    ]
    return "\n".join(
        [
            table(["run (fresh process)", "seconds", "peak RSS MB"], rows),
            "",
            "Medians of three runs. " + source("startup", r),
        ]
    )


def parity(results: Results) -> str:
    """Each precision's embeddings against open_clip fp32 on real photos."""
    r = results.get("parity")
    rows = []
    for p in r["rows"]:
        kind = "/".join(sorted({str(q) for q in (p.get("quantization") or {}).values() if q}))
        batch = p.get("batch_max_abs_diff") or {}
        rows.append(
            [
                p["precision"] + (f" ({kind})" if kind else ""),
                num(p["image"]["min_cosine"], 6),
                num(p["text"]["min_cosine"], 6),
                num(batch.get("image")),
                num(batch.get("text")),
                f"{p['top1_agreement']:.1%}",
            ]
        )
    return "\n".join(
        [
            table(
                [
                    "precision",
                    "image min cosine",
                    "text min cosine",
                    "image alone vs in a batch",
                    "text alone vs in a batch",
                    "top-1 agreement",
                ],
                rows,
            ),
            "",
            f"{r['rows'][0]['images']} photos, {r['labels']} labels; random weights put the classes close together, so "
            "top-1 agreement measures near-ties, not accuracy. " + source("parity", r),
        ]
    )


def low_memory(results: Results) -> str:
    """Peak RSS of `clip-rt classify` per slim bundle, default and low-memory mode."""
    r = results.get("memory_runs")
    rows = []
    for bundle, runs in r["bundles"].items():

        def mb(key: str, runs: Json = runs) -> str:  # the file keeps MiB
            return num(runs[key]["peak_rss_mb"] * 1.048576) if key in runs else "not measured"

        rows.append(
            [bundle, mb("one_image"), mb("one_image_lowmem"), mb("one_image_repeat"), mb("folder"), mb("folder_lowmem")]
        )
    return "\n".join(
        [
            table(
                [
                    "slim int8 bundle",
                    "one photo",
                    "one photo, `--low-memory`",
                    "the same again (labels cached)",
                    f"{r['images_in_folder']} photos",
                    f"{r['images_in_folder']} photos, `--low-memory`",
                ],
                rows,
            ),
            "",
            "Peak RSS in MB (10^6 bytes), each run a fresh process, a runtime-only install (no OpenVINO), "
            "6-MP JPEGs, labels `cat,dog,car`. " + source("memory_runs", r),
        ]
    )


def serve(results: Results) -> str:
    """`clip-rt serve`: dynamic batching against one request at a time."""
    r = results.get("serve")
    rows = [
        [
            x["clients"],
            x["mode"].replace("_", " "),
            num(x["throughput_rps"]),
            num(x["p50_ms"]),
            num(x["p99_ms"]),
            x["errors"],
        ]
        for x in r["results"]
    ]
    gains = ", ".join(f"{k} clients {ratio(v)}" for k, v in r["batching_speedup"].items())
    return "\n".join(
        [
            table(["clients", "mode", "requests/s", "p50 ms", "p99 ms", "errors"], rows),
            "",
            f"Each request one photo ({r['photo']}); best of {r['rounds']} rounds. "
            f"Batching over one at a time: {gains}. "
            f"Image encoder: {r['runtime']['image']}. " + source("serve", r),
        ]
    )


def arm64(results: Results) -> str:
    """The arm64 check's last complete run: memory per slim bundle on aarch64 (under qemu) beside
    x86, its tests and its parity verdict."""
    r = results.get("arm64_check")
    mib = 1.048576  # the report keeps MiB; the budgets are in MB
    budgets = {b["name"]: b for b in r["budgets"]}
    rows = []
    for model, runs in r["memory"]["models"].items():

        def cell(key: str, runs: Json = runs) -> str:
            run = runs.get(key)
            if not run:
                return "not measured"
            return f"{num(run['estimate_mib'] * mib)} (x86 {num(run['x86_mib'] * mib)})"

        budget = budgets.get(f"rss {model}", {}).get("budget_mb")
        slim = r["bundles"].get(model, {}).get("slim_mib")
        rows.append(
            [
                model,
                num(slim * mib) if slim else "",
                cell("one_image"),
                cell("one_image_lowmem"),
                cell("one_image_repeat"),
                cell("folder"),
                num(budget) if budget else "",
            ]
        )
    tests = r.get("tests") or {}
    install = r["install"]
    checks = [
        f"{m}: {'passed' if all(c.get('passed') for c in v['checks'].values()) else 'FAILED'}"
        for m, v in r["parity"].items()
    ]
    return "\n".join(
        [
            table(
                [
                    "slim int8 bundle",
                    "MB",
                    "one photo",
                    "one photo, `--low-memory`",
                    "again, labels cached",
                    "200 photos",
                    "budget MB",
                ],
                rows,
            ),
            "",
            f"Peak RSS in MB (10^6 bytes) of `clip-rt classify`, aarch64 under qemu-user ({r['cpu']}) beside the same "
            f"command natively on x86-64 ({r['host']}); on aarch64 an estimate of the program without qemu's own "
            f"memory. Runtime-only install: {num(install['aarch64_mib'] * mib)} MB on aarch64, "
            f"{num(install['x86_mib'] * mib)} MB on x86-64. Torch-free tests on aarch64: {tests.get('passed')} passed, "
            f"{tests.get('failed')} failed. Same inputs on both sides (pixels, token ids, fp32 and int8 embeddings "
            f"within the export's gates): {', '.join(checks)}. CPU choice: {r['cpu_choice']['detail']}. "
            "From `bench/results/arm64_check.json`: `scripts/arm64-check` (the summary line is `arm64-check "
            f"{'PASS' if r['summary'].startswith('arm64-check PASS') else 'FAIL'}`).",
        ]
    )


def model_families(results: Results) -> str:
    """Per model family: the export's parity and the int8 speed-up (``python -m bench.models_table``)."""
    from .models_table import render_table

    r = results.get("models")
    runs: dict[str, list[str]] = {}
    for family, row in r["rows"].items():
        runs.setdefault(row.get("measured", {}).get("command", r.get("command", "?")), []).append(family)
    lines = [
        render_table(r["rows"]),
        "",
        f"Random weights (seed 0); int8 speed-up over fp32 on {host(r['machine'])}, two threads. "
        + ("Command: " if len(runs) == 1 else "Commands, each measuring some rows:"),
    ]
    if len(runs) == 1:
        lines[-1] += f"`{public_command(next(iter(runs)))}`."
    else:
        lines += [""] + [f"- {', '.join(families)}: `{public_command(command)}`" for command, families in runs.items()]
    return "\n".join(lines)


def conv_int8(results: Results) -> str:
    """Which ops int8 should cover in convolutional image towers (``python -m bench.conv_int8``)."""
    from .conv_int8 import render

    r = results.get("conv_int8")
    batch = next(iter(r["archs"].values()))["batch"]
    return "\n".join(
        [
            render(r),
            "",
            f"Batch {batch}, two threads, medians of 5 rounds; min cosine against torch fp32 on the 24 "
            "held-out photos and crops. " + source("conv_int8", r),
        ]
    )


EXTRA_PURPOSE = {
    "runtime": "embeddings, zero-shot, search, the CLI (no torch)",
    "export": "`clip-rt export`: torch, open_clip, NNCF",
    "report": "`classify --report`, `similarity --plot` (matplotlib)",
    "video": "`clip-rt video` (PyAV)",
    "serve": "`clip-rt serve` (Starlette, uvicorn)",
    "ray": "`clip-rt ray` jobs (Ray Data, pyarrow)",
    "ann": "`search --method ann` (faiss)",
    "openvino": "the OpenVINO backend, chosen per CPU where faster",
    "gpu": "CUDA (onnxruntime-gpu; see the GPU page)",
    "test": "the test suite",
    "docs": "building this documentation (MkDocs)",
}


def install_sizes(results: Results) -> str:
    """What ``pip install`` puts on disk, the runtime alone and each extra."""
    r = results.get("install_sizes")
    installs = r["installs"]
    runtime = installs.get("runtime", {})
    base = set(runtime.get("distributions_mb") or [d["name"] for d in runtime.get("largest", [])])
    rows = []
    for name, x in installs.items():
        # What the extra adds: its largest packages that the runtime alone does not install.
        sizes = x.get("distributions_mb") or {d["name"]: d["mb"] for d in x["largest"]}
        own = sorted(((n, mb) for n, mb in sizes.items() if name == "runtime" or n not in base), key=lambda kv: -kv[1])
        largest = ", ".join(f"{n} {num(mb)}" for n, mb in own[:3])
        cuda = (
            f"; CUDA libraries {num(x['cuda_libraries_mb'] / 1000)} GB of it"
            if x.get("cuda_libraries_mb", 0) > 100
            else ""
        )
        added = "" if name == "runtime" else f"+{num(x['added_to_runtime_mb'])}"
        rows.append([f"`{x['spec']}`", EXTRA_PURPOSE.get(name, ""), num(x["installed_mb"]), added, largest + cuda])
    return "\n".join(
        [
            table(["install", "for", "MB installed", "MB over the runtime", "largest packages it adds (MB)"], rows),
            "",
            f"site-packages of a fresh virtual environment after `pip install` (Python {r['machine']['python']} on "
            f"{r['machine'].get('system', 'Linux')} {r['machine'].get('arch', 'x86_64')}; 1 MB = 10^6 bytes); measured "
            "by `python -m bench.install_sizes`.",
        ]
    )


def install_extras(results: Results) -> str:
    """The README's short form of :func:`install_sizes`: what each install is for and adds."""
    r = results.get("install_sizes")
    rows = [
        [
            f"`{x['spec']}`",
            EXTRA_PURPOSE.get(name, ""),
            num(x["installed_mb"]) if name == "runtime" else f"+{num(x['added_to_runtime_mb'])}",
        ]
        for name, x in r["installs"].items()
    ]
    return "\n".join(
        [
            table(["install", "for", "MB on disk"], rows),
            "",
            "site-packages of a fresh virtual environment (1 MB = 10^6 bytes; `python -m "
            "bench.install_sizes`); what each extra brings: [Install](docs/install.md).",
        ]
    )


def history(results: Results) -> str:
    """Every result file: when, where and with what command it was measured."""
    rows = []
    for name in results.names("**/*.json"):
        r = results.get(name)
        machine = r.get("machine") or {}
        when = r.get("when") or "not recorded"
        load = machine.get("load_average_1_5_15min")
        rows.append(
            [
                f"`{name}.json`",
                str(when).replace("T", " "),
                host(machine) if machine else "see the file",
                f"`{r['command']}`" if r.get("command") else "see the file",
                "" if load is None else " / ".join(map(str, load)),
            ]
        )
    rows.sort(key=lambda row: row[1])
    return table(["result", "when (UTC)", "host", "command", "load average 1/5/15 min"], rows)


SECTIONS: dict[str, Callable[[Results], str]] = {
    "peers": peers,
    "jobs": jobs,
    "encoders": encoders,
    "goals": goals,
    "backends": backends,
    "end-to-end": end_to_end,
    "startup": startup,
    "parity": parity,
    "low-memory": low_memory,
    "arm64": arm64,
    "model-families": model_families,
    "conv-int8": conv_int8,
    "serve": serve,
    "install-sizes": install_sizes,
    "install-extras": install_extras,
    "history": history,
}


# -- the pages -------------------------------------------------------------------------------
def pages(root: Path) -> list[Path]:
    """README.md and every markdown page under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def render_page(text: str, results: Results, where: str) -> str:
    names = OPEN_MARKER.findall(text)
    closed = MARKER.findall(text)
    if len(names) != len(closed):
        raise ResultsError(f"{where}: a `<!-- generated: NAME -->` without its `<!-- end generated -->`")
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise ResultsError(f"{where}: unknown generated section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        try:
            body = SECTIONS[name](results).rstrip("\n")
        except (KeyError, TypeError, ZeroDivisionError) as exc:
            raise ResultsError(f"{where}: section {name}: the results lack what it reads ({exc!r})") from exc
        return f"<!-- generated: {name} -->\n{body}\n<!-- end generated -->"

    return MARKER.sub(fill, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.readme", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout (README.md and docs/)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="the result files")
    args = ap.parse_args(argv)
    results = Results(args.results)
    stale = []
    try:
        for page in pages(args.root):
            text = page.read_text(encoding="utf-8")
            new = render_page(text, results, str(page.relative_to(args.root)))
            if new != text:
                stale.append(page)
                if not args.check:
                    page.write_text(new, encoding="utf-8")
    except ResultsError as exc:
        print(f"bench.readme: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(str(p.relative_to(args.root)) for p in stale)
    if args.check:
        if stale:
            print(f"bench.readme: stale (run `python -m bench.readme`): {names}", file=sys.stderr)
            return 1
        return 0
    print(f"rewrote {names}" if stale else "every generated section is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
