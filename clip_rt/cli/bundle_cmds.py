"""`clip-rt export`, `clip-rt info`, `clip-rt models`: making bundles and seeing what is in them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from ..errors import BundleError, InputError
from .group import main

if TYPE_CHECKING:
    from ..bundle.manifest import Manifest


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _err(message: str) -> None:
    click.echo(message, err=True)


@main.command("export")
@click.argument("model")
@click.option(
    "--pretrained",
    "-p",
    default=None,
    metavar="TAG|PATH|none",
    help="open_clip pretrained tag, a checkpoint file, or `none` for random weights. "
    "Default: `openai` where open_clip has it.",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp32", "fp16", "int8"]),
    help="Extra graph precision to write (fp16, int8); repeat for several. fp32 is written too unless --no-fp32.",
)
@click.option(
    "--no-fp32",
    "no_fp32",
    is_flag=True,
    help="Slim bundle for small devices: keep only the --precision graphs (fp32 is still exported "
    "and checked against torch, as their source, then left out).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Bundle directory to write. Default: the store ($CLIP_RT_HOME/models/<arch>-<tag>).",
)
@click.option(
    "--model-config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="An open_clip model config JSON; MODEL is then the name it is known by.",
)
@click.option("--seed", type=int, default=None, help="Seed for random weights (deterministic exports).")
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default=None,
    help="onnxruntime int8 activation calibration (implies --int8-method onnxruntime; its default: minmax).",
)
@click.option(
    "--int8-method",
    type=click.Choice(["nncf", "onnxruntime", "ort"]),
    default=None,
    help="int8 quantiser: nncf (default; the graph OpenVINO runs fastest) or onnxruntime "
    "(onnxruntime.quantization static QDQ, for comparison or without nncf). "
    "Default for convolutional image towers: onnxruntime (measured there).",
)
@click.option(
    "--int8-min-cosine",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Accept int8 graphs down to this min cosine vs torch (default gate: 0.999 image, 0.998 text); "
    "recorded in the manifest. For small models whose int8 rounding is coarser.",
)
@click.option(
    "--tokenizer",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help="The model's Hugging Face tokenizer: a tokenizer.json or a tokenizer folder (models whose "
    "tokenizer is not CLIP BPE: SigLIP, XLM-R, ...). Default: the Hugging Face cache.",
)
@click.option("--force", is_flag=True, help="Replace an existing bundle at the target.")
@click.option("--quiet", "-q", is_flag=True, help="Only print the bundle path.")
@click.pass_context
def export_cmd(
    ctx: click.Context,
    model: str,
    pretrained: Optional[str],
    precisions: tuple[str, ...],
    no_fp32: bool,
    output: Optional[Path],
    model_config: Optional[Path],
    seed: Optional[int],
    calibration_method: Optional[str],
    int8_method: Optional[str],
    int8_min_cosine: Optional[float],
    tokenizer: Optional[Path],
    force: bool,
    quiet: bool,
) -> None:
    """Export MODEL (open_clip name such as ViT-B-32, or OpenAI alias such as ViT-B/32) to a bundle.

    Every graph is checked against the torch model before the bundle is written; the bundle
    appears atomically, or not at all.
    """
    if no_fp32:  # a usage error before the (slow) torch check and imports
        from clip_rt_export.api import normalize_precisions

        try:
            normalize_precisions(precisions, include_fp32=False)
        except InputError as exc:
            raise click.UsageError(str(exc), ctx) from exc
    missing = [m for m in ("torch", "open_clip") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"`clip-rt export` needs {' and '.join(missing)}: pip install 'clip-rt[export]'")
    from clip_rt_export import ExportInterrupted, export_bundle
    from clip_rt_export.progress import ExportProgress, display_for

    # Each phase on stderr: a live line with counts and time left on a terminal, one plain line
    # per phase otherwise; --quiet: nothing but the path on stdout.
    progress = ExportProgress(None if quiet else display_for(sys.stderr))
    try:
        path = export_bundle(
            model,
            pretrained=pretrained,
            precisions=precisions or ("fp32",),
            output=output,
            model_config=model_config,
            seed=seed,
            force=force,
            progress=progress,
            calibration_method=calibration_method,
            int8_method=int8_method,
            int8_min_cosine=int8_min_cosine,
            include_fp32=not no_fp32,
            tokenizer=tokenizer,
        )
    except InputError as exc:
        raise click.UsageError(str(exc), ctx) from exc
    except ExportInterrupted as exc:
        _err(f"Aborted: {exc}")
        ctx.exit(exc.exit_code)
    click.echo(str(path))


_TOLERANCE_LABELS = {"max_abs_diff": "diff<=", "min_cosine": "cos>=", "batch_max_abs_diff": "batch<="}


def _manifest_summary(path: Path) -> dict[str, Any]:
    from ..bundle.manifest import read_manifest

    m = read_manifest(path)
    sizes = {p: sum(m.files[g.file].bytes for g in m.graphs[p].values() if g.file in m.files) for p in m.precisions}
    return {"manifest": m, "sizes": sizes}


JOBS = {"one photo": (1, 5), "a folder of 200 photos": (200, 5)}  # (images, prompts) of the jobs info shows


def _runtime_plan(
    manifest: Manifest, provider: Optional[str], backend: Optional[str], precision: Optional[str], jobs: bool = False
) -> dict[str, Any]:
    """What ``load()`` would choose on this machine, without creating a session: for long-lived
    use (a server, a Python session), and with *jobs* per short command of JOBS' sizes."""
    from ..engine.backends import plan_runtime
    from ..engine.cpu import detect_cpu
    from ..engine.runtime_info import known_evidence, runtime_dict
    from ..engine.session import CPU, available_providers, provider_name, resolve_providers
    from ..options import Workload

    first = provider_name(resolve_providers([provider] if provider else None, available_providers())[0])
    cpu = detect_cpu()
    evidence = known_evidence(manifest.fingerprint, cpu)

    def plan(workload: Optional[Workload]) -> Any:
        return plan_runtime(
            manifest,
            cpu,
            accelerator=None if first == CPU else first,
            backend=None if backend == "auto" else backend,
            precision=precision,
            evidence=evidence,
            workload=workload,
        )

    out = runtime_dict(plan(None))
    if jobs:
        out["jobs"] = {}
        for name, (images, prompts) in JOBS.items():
            p = plan(Workload(images=images, prompts=prompts, lifetime="short"))
            out["jobs"][name] = {
                enc: {
                    "backend": p.encoder(enc).backend,
                    "precision": p.encoder(enc).precision,
                    "reason": p.encoder(enc).reason,
                }
                for enc in ("image", "text")
            }
    return out


def _job_lines(jobs: dict[str, Any]) -> list[str]:
    """One line per job size: what a `clip-rt classify` of that size runs, and why."""
    lines = []
    for name, plan in jobs.items():
        img, txt = plan["image"], plan["text"]
        same = (img["backend"], img["precision"]) == (txt["backend"], txt["precision"])
        runs = (
            f"{img['backend']} {img['precision']}"
            if same
            else f"image {img['backend']} {img['precision']}, text {txt['backend']} {txt['precision']}"
        )
        lines.append(f"{'':<15}{name}: {runs}")
        lines.append(f"{'':<17}why: {img['reason']}")
    return lines


@main.command("info")
@click.argument("bundle", metavar="[NAME|DIR]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (and the runtime choice) as JSON.")
@click.option("--verify", is_flag=True, help="Also check every file's size and sha256.")
@click.option("--provider", default=None, metavar="NAME", help="Show the choice for this execution provider.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "onnxruntime", "openvino"]),
    default=None,
    help="Show the choice with this backend forced.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8", "bf16"]),
    default=None,
    help="Show the choice with this precision forced.",
)
def info_cmd(
    bundle: Optional[str],
    as_json: bool,
    verify: bool,
    provider: Optional[str],
    backend: Optional[str],
    precision: Optional[str],
) -> None:
    """What is in a bundle: model, preprocessing, graphs, their parity with torch, and what would
    run each encoder on this CPU (backend, precision, mode) and why. Without NAME|DIR: the
    default model, and where that setting came from ($CLIP_RT_MODEL, the config file, or the
    built-in default)."""
    from ..bundle.manifest import verify_files
    from ..bundle.store import resolve_bundle
    from ..errors import ModelNotFoundError
    from ..settings import default_model

    setting = default_model() if bundle is None else None
    try:
        path = resolve_bundle(setting.value if setting else str(bundle))
    except ModelNotFoundError as exc:
        if setting is None:
            raise
        raise ModelNotFoundError(f"default model {setting.describe()}: {exc}") from exc
    summary = _manifest_summary(path)
    m = summary["manifest"]
    if verify:
        verify_files(path, m)
    from ..engine.runtime_info import describe_lines

    runtime = _runtime_plan(m, provider, backend, precision, jobs=provider is None)
    from ..engine.memory import choose_memory_mode, memory_limit

    memory_mode = choose_memory_mode(None, memory_limit())  # what a model command does without the flag
    slim = "fp32" not in m.precisions
    if as_json:
        data = m.to_dict()
        data["path"] = str(path)
        data["runtime"] = runtime
        data["memory"] = memory_mode.to_dict()
        data["slim"] = slim
        if setting is not None:
            data["default_model"] = {"value": setting.value, "source": setting.source}
        click.echo(json.dumps(data, indent=2))
        return
    weights = m.pretrained or "random weights"
    lines = [f"default model: {setting.describe()}"] if setting is not None else []
    lines += [
        f"bundle:        {m.name}",
        f"path:          {path}",
        f"architecture:  {m.architecture}",
        f"pretrained:    {weights}" + (f" (sha256 {m.checkpoint_sha256[:16]}...)" if m.checkpoint_sha256 else ""),
        f"embed dim:     {m.embed_dim}",
        f"logit scale:   {m.logit_scale:.4f}" + (f", bias {m.logit_bias:.4f}" if m.logit_bias is not None else ""),
        f"image:         {m.image.size[0]}x{m.image.size[1]}, {m.image.interpolation}, resize {m.image.resize_mode}, "
        f"mean {tuple(round(x, 4) for x in m.image.mean)}, std {tuple(round(x, 4) for x in m.image.std)}",
        f"text:          context {m.text.context_length}, vocab {m.text.vocab_size}, "
        f"dynamic sequence {'yes' if m.text.dynamic_sequence else 'no'}",
        f"precisions:    {', '.join(m.precisions)}"
        + (" (slim bundle: no fp32 graphs; its parity figures below are against torch)" if slim else ""),
        "tokenizer:     "
        + (
            "CLIP BPE"
            if m.text.tokenizer_kind == "clip_bpe"
            else f"Hugging Face (clean {m.text.clean}, pad id {m.text.pad_token_id}, {m.text.padding_side} padding)"
        )
        + (f", pooling {m.text.pooling}" if m.text.pooling else ""),
        "scoring:       "
        + (
            "softmax over the labels"
            if m.scoring == "softmax"
            else "sigmoid per label (sigmoid(logit_scale * cos + logit_bias))"
        ),
        f"fingerprint:   {m.fingerprint}",
        f"created:       {m.created}",
        f"format:        {m.format_version}",
        "versions:      " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        "",
        "precision  encoder  file                 size      max|diff|   min cosine  samples  tolerance       ok",
    ]
    for precision in m.precisions:
        for encoder, graph in m.graphs[precision].items():
            entry = m.files.get(graph.file)
            size = (
                _human_bytes(entry.bytes + sum(m.files[f].bytes for f in graph.external_data if f in m.files))
                if entry
                else "?"
            )
            fig = m.parity.get(precision, {}).get(encoder)
            if fig is None:
                figures = f"{'-':>10}  {'-':>11}  {'-':>7}  {'-':<14}  -"
            else:
                tol = ", ".join(f"{_TOLERANCE_LABELS.get(k, k + '=')}{v:g}" for k, v in fig.tolerance.items())
                figures = (
                    f"{fig.max_abs_diff:>10.2e}  {fig.min_cosine:>11.6f}  {fig.samples:>7}  {tol:<14}  "
                    f"{'yes' if fig.passed else 'NO'}"
                )
            lines.append(f"{precision:<9}  {encoder:<7}  {graph.file:<19}  {size:>8}  {figures}")
    for precision in m.precisions:
        for encoder in m.graphs[precision]:
            q = m.quantization_of(precision, encoder)
            if q is None:
                continue
            fig = m.parity.get(precision, {}).get(encoder)
            extra = []
            if q.calibration is not None:
                extra.append(
                    f"calibrated ({q.calibration.method}) on {q.calibration.samples} "
                    f"{q.calibration.source.split(':')[0]}"
                )
            if fig is not None and fig.top1_agreement is not None:
                extra.append(f"top-1 agreement {fig.top1_agreement:.3f}")
            if fig is not None and fig.batch_max_abs_diff is not None:
                extra.append(f"alone vs batch {fig.batch_max_abs_diff:.1e}")
            lines.append(
                f"{precision} {encoder}: {q.kind} int8 by {q.method} ({q.activations} activations, "
                f"{'per-channel' if q.per_channel else 'per-tensor' if q.per_channel is False else '?'} "
                f"{q.weights} weights), batch-independent: {'yes' if q.batch_independent else 'no'}"
                + (f"; {', '.join(extra)}" if extra else "")
            )
    if verify:
        lines += ["", f"checksums:     ok ({len(m.files)} files)"]
    if m.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in m.notes]
    lines += ["", "on this machine, for long-lived use (serve, Ray, a Python session; --backend/--precision override):"]
    lines += describe_lines(runtime)
    if runtime.get("jobs"):
        lines += [f"{'commands:':<15}a command plans for its own size (start-up included):"] + _job_lines(
            runtime["jobs"]
        )
    lines.append(f"memory:        low-memory mode {'on' if memory_mode.low else 'off'} ({memory_mode.reason})")
    click.echo("\n".join(lines))


def _echo_families(families: dict[str, Any]) -> None:
    """Per family: the architecture exported here, its tokenizer and scoring, the parity and the
    int8 speed-up measured (models/families.json, docs/models.md)."""
    rows = families.get("families", {})
    if not rows:
        return
    click.echo("Model families exported and measured by clip-rt's benchmarks (random weights; docs/models.md):")
    click.echo(
        f"  {'family':<20} {'architecture':<28} {'scoring':<8} {'fp32 diff':>9} {'int8 cos img/txt':>17} "
        f"{'int8 speed-up img/txt':>22}  tokenizer"
    )

    def pair(values: Any, fmt: str) -> str:
        if not values or all(v is None for v in values):
            return "-"
        return "/".join("-" if v is None else format(v, fmt) for v in values)

    for family, row in rows.items():
        click.echo(
            f"  {family:<20} {row['architecture']:<28} {row['scoring']:<8} "
            f"{max(row['fp32_max_abs_diff']):>9.1e} {pair(row.get('int8_min_cosine'), '.4f'):>17} "
            f"{(lambda p: p if p == '-' else p + 'x')(pair(row.get('int8_speedup'), '.2f')):>22}  "
            f"{row['tokenizer']}"
        )
    click.echo("")


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option(
    "--available",
    is_flag=True,
    help="List the names `clip-rt export` accepts instead (and, apart, the architectures it refuses, with the reason).",
)
def models_cmd(as_json: bool, available: bool) -> None:
    """Bundles in the store ($CLIP_RT_HOME/models)."""
    from ..bundle.catalogue import (
        architectures,
        exportable_architectures,
        family_of,
        load_catalogue,
        load_families,
        unsupported,
    )
    from ..bundle.store import list_bundles, models_dir

    if available:
        aliases = load_catalogue()["aliases"]
        refused = {
            arch: {"reason": reason, "tags": architectures().get(arch, [])} for arch, reason in unsupported().items()
        }
        families = load_families()
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "aliases": aliases,
                        "architectures": exportable_architectures(),
                        "unsupported": refused,
                        "families": families.get("families", {}),
                        "family_of": {a: family_of(a) for a in architectures()},
                    },
                    indent=2,
                    ensure_ascii=False,
                )
            )
            return
        _echo_families(families)
        click.echo("OpenAI aliases:")
        for name, ref in aliases.items():
            click.echo(f"  {name:<16} {ref['architecture']} --pretrained {ref['pretrained']}")
        click.echo(
            "open_clip architectures `clip-rt export` supports [family] (pretrained tags; "
            "`--pretrained none` always works):"
        )
        for arch, tags in exportable_architectures().items():
            family = family_of(arch)
            click.echo(f"  {arch:<32} {'[' + family + ']' if family else '':<22} {', '.join(tags) if tags else '-'}")
        if refused:
            click.echo(f"not supported yet ({len(refused)} architectures; export refuses them):")
            for arch, entry in refused.items():
                click.echo(f"  {arch:<32} {entry['reason']}")
        return
    rows: list[dict[str, Any]] = []
    for path in list_bundles():
        try:
            summary = _manifest_summary(path)
        except BundleError as exc:  # one broken bundle does not hide the others
            _err(f"warning: skipped a broken bundle: {exc}")
            continue
        m = summary["manifest"]
        rows.append(
            {
                "name": m.name if m.name == path.name else path.name,
                "path": str(path),
                "architecture": m.architecture,
                "pretrained": m.pretrained,
                "precisions": m.precisions,
                "bytes": sum(e.bytes for e in m.files.values()),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(
            f"no bundles in {models_dir()}; export one with `clip-rt export ViT-B/32` "
            f"(or `clip-rt export ViT-B-32 --pretrained none` offline)"
        )
        return
    click.echo(f"{'name':<32} {'architecture':<20} {'pretrained':<22} {'precisions':<16} size")
    for row in rows:
        click.echo(
            f"{row['name']:<32} {row['architecture']:<20} {str(row['pretrained'] or 'random'):<22} "
            f"{','.join(row['precisions']):<16} {_human_bytes(row['bytes'])}"
        )
