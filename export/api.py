"""``export_bundle``: open_clip model -> checked ONNX graphs + tokenizer + manifest, atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import platform
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from clip_rt.bundle.catalogue import store_name
from clip_rt.bundle.manifest import (
    PRECISIONS,
    GraphEntry,
    ImageConfig,
    Manifest,
    ParityFigure,
    Quantization,
    TextConfig,
    required_format_version,
)
from clip_rt.bundle.store import models_dir
from clip_rt.errors import ExportError, InputError

from .bundle import StagingDir, check_target, interrupt_handlers
from .load import LoadedModel, WeightsSource, load_model, resolve
from .memory import release_memory
from .progress import ExportProgress, LineDisplay

TOKENIZER_FILE = "tokenizer.json"


def normalize_precisions(precisions: Iterable[str], include_fp32: bool = True) -> list[str]:
    """The precisions the bundle will hold, deduplicated, in the format's order: the requested
    ones plus fp32 (the runtime's exact path), unless *include_fp32* is False (a slim bundle).
    fp32 graphs are exported and checked against torch either way: the other precisions are
    derived from them."""
    if isinstance(precisions, str):  # "fp16" means ("fp16",), not its letters
        precisions = [precisions]
    wanted = {str(p).lower() for p in precisions}
    unknown = sorted(wanted - set(PRECISIONS))
    if unknown:
        raise InputError(f"unknown precision {', '.join(unknown)}: expected any of {', '.join(PRECISIONS)}")
    if include_fp32:
        wanted.add("fp32")
    elif "fp32" in wanted:
        raise InputError("--no-fp32 leaves the fp32 graphs out, but fp32 was also asked for with --precision fp32")
    elif not wanted:
        raise InputError("--no-fp32 needs another precision to keep: add --precision int8 and/or --precision fp16")
    return [p for p in PRECISIONS if p in wanted]


def default_output(arch: str, source: WeightsSource) -> Path:
    return models_dir() / store_name(arch, source.store_tag)


def export_bundle(
    model: str,
    pretrained: Optional[str] = None,
    precisions: Iterable[str] = ("fp32",),
    output: Optional[Path] = None,
    model_config: Optional[Path] = None,
    seed: Optional[int] = None,
    force: bool = False,
    log: Optional[Callable[[str], None]] = None,
    calibration_method: Optional[str] = None,
    int8_min_cosine: Optional[float] = None,
    include_fp32: bool = True,
    tokenizer: Optional[Path] = None,
    int8_method: Optional[str] = None,
    progress: Optional[ExportProgress] = None,
) -> Path:
    """Export *model* to a bundle directory and return its path.

    *model*: an open_clip architecture (``ViT-B-32``) or OpenAI alias (``ViT-B/32``); with
    *model_config*, the name to give that open_clip config JSON. *pretrained*: an open_clip tag,
    a checkpoint file, ``"none"`` for random weights, or None for the default (``openai`` where
    open_clip has it; random for *model_config*). *output*: default the store,
    ``models_dir()/<arch>-<tag>``. *calibration_method*: the int8 activation calibration
    (``minmax``, ``percentile``, ``entropy``; default the measured best, ``RECOMMENDED_INT8``).
    *int8_min_cosine*: replaces the int8 gate's min cosine (default 0.999) for models whose int8
    rounding is known to be coarser (small widths); recorded in the manifest's parity tolerance.
    *tokenizer*: a ``tokenizer.json`` or Hugging Face tokenizer folder, for models whose tokenizer
    is not open_clip's CLIP BPE (default: the Hugging Face cache; docs/models.md).
    *int8_method*: the int8 quantiser, ``nncf`` (``nncf.quantize``, the graph OpenVINO runs
    fastest) or ``onnxruntime`` (onnxruntime.quantization's static QDQ; implied by
    *calibration_method*, since those are its calibrators); default: NNCF, except for a
    convolutional image tower (onnxruntime's conv int8, measured there; convert.int8_method_for).
    Raises InputError for bad arguments, ExportError (ParityError)
    when the weights cannot be had or a graph disagrees with torch; nothing is written then.
    SIGINT/SIGTERM raise ExportInterrupted (a KeyboardInterrupt) after cleaning up.
    *log*: called with a line when each phase starts and ends, and with each parity figure.
    *progress*: an ``ExportProgress`` to report the phases to instead (the CLI's live display;
    its ``records`` keep each phase's time); *log* is then not used.
    *include_fp32* False makes a slim bundle (for small devices): the fp32 graphs are still
    exported and checked against torch in the staging folder, as the source of the requested
    int8/fp16 graphs, then deleted; the bundle holds only *precisions*.
    """
    if progress is None:
        progress = ExportProgress(LineDisplay(log) if log is not None else None)
    wanted = normalize_precisions(precisions, include_fp32)
    if calibration_method is not None:
        from .optimize import CALIBRATION_METHODS

        if calibration_method not in CALIBRATION_METHODS:
            raise InputError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration_method!r}"
            )
        if "int8" not in wanted:
            raise InputError("a calibration method only applies to int8: add --precision int8")
    if int8_method is not None and "int8" not in wanted:
        raise InputError("an int8 method only applies to int8: add --precision int8")
    from .convert import resolve_int8_method

    method = resolve_int8_method(int8_method, calibration_method)
    if int8_min_cosine is not None:
        if (
            isinstance(int8_min_cosine, bool)
            or not isinstance(int8_min_cosine, (int, float))
            or not 0.0 < float(int8_min_cosine) <= 1.0
        ):
            raise InputError(f"the int8 min cosine must be a number in (0, 1], got {int8_min_cosine!r}")
        if "int8" not in wanted:
            raise InputError("an int8 min cosine only applies to int8: add --precision int8")
    with progress.phase("import", "importing torch and open_clip"):  # seconds before anything else can start
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    arch, source = resolve(model, pretrained, model_config)
    target = Path(output).expanduser() if output is not None else default_output(arch, source)
    check_target(target.absolute(), force)  # before minutes of work, not after
    weights = {"random": "random weights", "tag": f"weights {source.value}"}.get(source.kind, f"{source.value}")
    from .noise import library_noise_filtered

    with interrupt_handlers(), library_noise_filtered(), StagingDir(target, force) as stage:
        # A download draws its own progress bars: no live line over them.
        with progress.phase("load", f"loading {arch} ({weights})", live=source.kind != "tag"):
            loaded = load_model(arch, source, seed=seed, log=progress.note, tokenizer=tokenizer)
        overrides = {"int8": {"min_cosine": float(int8_min_cosine)}} if int8_min_cosine is not None else {}
        manifest = _build(loaded, wanted, stage.path, progress, calibration_method, overrides, method)
        with progress.phase("write", "writing the bundle (checksums, manifest)"):
            manifest.name = target.name
            manifest.files = stage.file_entries()
            path = stage.commit(manifest)
    progress.note(f"wrote {path}")
    return path


def _build(
    loaded: LoadedModel,
    precisions: list[str],
    work: Path,
    progress: ExportProgress,
    calibration_method: Optional[str] = None,
    overrides: Optional[dict[str, dict[str, float]]] = None,
    int8_method: Optional[str] = None,
) -> Manifest:
    from . import calibration, convert, graphs, validate

    model = loaded.model
    cfg = model.visual.preprocess_cfg
    size = _pair(cfg["size"])
    with progress.phase("references", "running torch on the parity inputs"):
        refs = validate.torch_references(model, loaded.tokenizer)
    context_length = int(refs.input_ids.shape[1])
    hf_fields = _hf_text_fields(loaded, model)
    dynamic = graphs.supports_dynamic_sequence(model, refs.pad_token_id, hf_fields.get("padding_side", "right"))
    pooling = graphs.text_pooling(model)
    logit_scale = float(model.logit_scale.exp().item())
    logit_bias = None if getattr(model, "logit_bias", None) is None else float(model.logit_bias.item())
    notes = list(loaded.notes)
    trimmed = f"; prompts also trimmed to {refs.longest_prompt} tokens" if dynamic else ""
    notes.append(f"parity inputs: {refs.describe()}{trimmed}")

    fp32 = {"image": work / "image_fp32.onnx", "text": work / "text_fp32.onnx"}
    external: dict[str, list[str]] = {}
    with progress.phase("export:image:fp32", f"exporting the image graph (fp32, {size[0]}x{size[1]})"):
        external["image"] = _quiet(graphs.export_image_graph, model, size, fp32["image"])
    sequence = "dynamic sequence" if dynamic else "fixed sequence"
    with progress.phase("export:text:fp32", f"exporting the text graph (fp32, context {context_length}, {sequence})"):
        external["text"] = _quiet(
            graphs.export_text_graph,
            model,
            context_length,
            dynamic,
            fp32["text"],
            refs.input_ids[:2] if hf_fields else None,
        )

    graph_entries: dict[str, dict[str, GraphEntry]] = {}
    parity: dict[str, dict[str, ParityFigure]] = {}
    quantization: dict[str, dict[str, Quantization]] = {}
    calibrations = {}
    methods: dict[str, str] = {}  # encoder -> the int8 quantiser used
    if "int8" in precisions:
        with progress.phase("calibration-inputs", "preparing the int8 calibration inputs"):
            calibrations = {
                "image": calibration.image_calibration(model),
                "text": calibration.text_calibration(loaded.tokenizer, dynamic, short_prompts=pooling == "mean"),
            }
            # Reads each graph: done here, so that memory goes back with the model's, below.
            methods = {encoder: convert.int8_method_for(encoder, src, int8_method) for encoder, src in fp32.items()}
    # Everything else works on the ONNX graphs and the references: the torch model (its weights
    # are the size of the fp32 graphs together) goes before the quantiser needs the memory.
    loaded.model = model = None
    release_memory()
    for precision in ["fp32"] + [p for p in precisions if p != "fp32"]:
        graph_entries[precision], parity[precision] = {}, {}
        for encoder, src in fp32.items():
            path = work / f"{encoder}_{precision}.onnx"
            big = bool(external[encoder])
            if precision == "int8":
                cal = calibrations[encoder]
                unit = cal.source.split(":")[0]
                with progress.phase(
                    f"quantise:{encoder}:int8",
                    f"quantising the {encoder} graph (int8, {methods[encoder]})",
                    total=len(cal.feeds) if methods[encoder] == "nncf" else None,
                    unit=unit,
                ) as step:
                    record = convert.to_int8(
                        src,
                        path,
                        encoder,
                        cal,
                        external_data=big,
                        calibration_method=calibration_method,
                        method=methods[encoder],
                        progress=step,
                    )
            elif precision == "fp16":
                with progress.phase(f"convert:{encoder}:fp16", f"converting the {encoder} graph to fp16"):
                    convert.to_fp16(src, path, external_data=big)
            gate = " (the int8 gate)" if precision == "int8" else ""
            with progress.phase(
                f"check:{encoder}:{precision}", f"checking the {encoder} graph ({precision}) against torch{gate}"
            ):
                figure = validate.check_graph(
                    precision, encoder, path, refs, dynamic and encoder == "text", (overrides or {}).get(precision)
                )
            release_memory()  # the check's and the quantiser's sessions, before the next graph's
            progress.note(
                f"parity {precision} {encoder}: max abs diff {figure.max_abs_diff:.2e}, "
                f"min cosine {figure.min_cosine:.6f}, top-1 agreement {figure.top1_agreement:.3f}, "
                f"alone vs batch {figure.batch_max_abs_diff:.1e} ({figure.samples} samples)"
            )
            if precision == "int8":
                # The gate passed, so the batch figure is within validate.TOLERANCES["int8"].
                quantization.setdefault(precision, {})[encoder] = dataclasses.replace(record, batch_independent=True)
            companions = tuple(sorted(p.name for p in work.iterdir() if p.name.startswith(path.name + ".")))
            graph_entries[precision][encoder] = GraphEntry(file=path.name, external_data=companions)
            parity[precision][encoder] = figure
    if "int8" in precisions:
        from .optimize import int8_settings

        by_ort = {e: int8_settings(e, src) for e, src in fp32.items() if methods.get(e) == "onnxruntime"}
        if by_ort:
            notes.append(convert.int8_note(calibration_method, by_ort))
        by_nncf = tuple(e for e in fp32 if methods.get(e) == "nncf")
        if by_nncf:
            notes.append(convert.nncf_note(by_nncf))
    if "fp16" in precisions:
        notes.append(convert.FP16_NOTE)
    if hf_fields:
        from .text_tokenizer import write_hf_tokenizer

        write_hf_tokenizer(loaded.tokenizer, work / TOKENIZER_FILE)
        text_fields: dict[str, Any] = dict(hf_fields)
    else:
        _write_tokenizer(work / TOKENIZER_FILE, context_length)
        tokenizer = loaded.tokenizer
        text_fields = {
            "vocab_size": int(tokenizer.vocab_size),
            "sot_token_id": int(tokenizer.sot_token_id),
            "eot_token_id": int(tokenizer.eot_token_id),
            "pad_token_id": 0,
        }  # open_clip pads with zeros
    scoring = "softmax" if logit_bias is None else "sigmoid"
    if scoring == "sigmoid":
        notes.append(
            "scoring: sigmoid (the model has a logit bias: SigLIP-style per-label probabilities "
            "sigmoid(logit_scale * cos + logit_bias), not a softmax over the labels)"
        )
    manifest = Manifest(
        name="",  # set by the caller, which knows the target
        architecture=loaded.architecture,
        pretrained=_manifest_pretrained(loaded.source),
        checkpoint_sha256=loaded.checkpoint_sha256,
        embed_dim=int(refs.image_embeds.shape[1]),
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        image=ImageConfig(
            size=size,
            mean=tuple(float(x) for x in cfg["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in cfg["std"]),  # type: ignore[arg-type]
            interpolation=str(cfg["interpolation"]),
            resize_mode=str(cfg["resize_mode"]),
            fill_color=int(cfg["fill_color"]),
        ),
        text=TextConfig(
            context_length=context_length,
            tokenizer_file=TOKENIZER_FILE,
            dynamic_sequence=dynamic,
            pooling=pooling,
            **text_fields,
        ),
        graphs=graph_entries,
        files={},  # filled once every file is written
        parity=parity,
        versions=_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
        quantization=quantization,
        scoring=scoring,
    )
    from .reference import write_parity_reference

    # Before a slim bundle's fp32 graphs go: what a derived mode is checked against at runtime.
    with progress.phase("parity-reference", "recording the fp32 embeddings of the sample inputs"):
        manifest.parity_reference = write_parity_reference(work, manifest, fp32)
    if "fp32" not in precisions:  # a slim bundle: fp32 was only the source of the others
        for entry in graph_entries.pop("fp32").values():
            for name in (entry.file, *entry.external_data):
                (work / name).unlink()
        checked = parity.pop("fp32")
        notes.append(
            "slim bundle: the fp32 graphs were exported and checked against torch (max abs diff "
            + ", ".join(f"{enc} {fig.max_abs_diff:.2e}" for enc, fig in checked.items())
            + ") as the source of the other precisions, then left out"
        )
    manifest.format_version = required_format_version(manifest)
    return manifest


def _hf_text_fields(loaded: LoadedModel, model: Any) -> dict[str, Any]:
    """The manifest's text fields for a Hugging Face tokenizer; {} for CLIP BPE."""
    if not hasattr(loaded.tokenizer, "tokenizer"):  # open_clip's HFTokenizer wraps a transformers one
        return {}
    from .text_tokenizer import hf_text_fields

    return hf_text_fields(loaded.tokenizer, _text_vocab_rows(model))


def _text_vocab_rows(model: Any) -> int:
    """Rows of the text tower's token-embedding table: every id must be below this."""
    import torch

    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text.transformer, "get_input_embeddings"):
        return int(text.transformer.get_input_embeddings().num_embeddings)
    for owner in (model, text):
        emb = getattr(owner, "token_embedding", None)
        if isinstance(emb, torch.nn.Embedding):
            return int(emb.num_embeddings)
    raise ExportError("cannot find the text tower's token embedding to check the tokenizer's ids against")


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _manifest_pretrained(source: WeightsSource) -> Optional[str]:
    return {"tag": source.value, "checkpoint": "checkpoint"}.get(source.kind)


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    # The dynamo exporter prints progress to stdout; a CLI's stdout is for its result.
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _write_tokenizer(path: Path, context_length: int) -> None:
    try:
        from .tokenizer_build import write_tokenizer
    except ImportError as exc:
        raise ExportError(f"cannot write {path.name}: clip_rt_export.tokenizer_build is not available ({exc})") from exc
    write_tokenizer(path, context_length)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    try:
        clip_rt_version = metadata.version("clip-rt")
    except metadata.PackageNotFoundError:
        clip_rt_version = "unknown"
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "open_clip": str(open_clip.__version__),
        "onnx": str(onnx.__version__),
        "onnxruntime": str(onnxruntime.__version__),
        "clip_rt": clip_rt_version,
    }
