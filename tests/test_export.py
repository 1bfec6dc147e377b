"""The export stage: bundles, parity checks, atomic writes, offline behaviour."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from clip_rt.bundle.manifest import read_manifest, sha256_file, verify_files
from clip_rt.errors import ExportError, InputError, ParityError

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
ort = pytest.importorskip("onnxruntime")

from clip_rt_export import convert, export_bundle, load, normalize_precisions, validate  # noqa: E402  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parent / "data" / "tiny-clip.json"  # as in conftest.py
TINY_ARCH = "tiny-clip"

pytestmark = pytest.mark.torch


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def _tiny_model(checkpoint: Path):
    load.resolve(TINY_ARCH, "none", TINY_CONFIG)
    model = open_clip.create_model(TINY_ARCH, pretrained=str(checkpoint)).eval()
    return model, open_clip.get_tokenizer(TINY_ARCH)


# -- the bundle ---------------------------------------------------------------------------------
def test_manifest_describes_the_bundle(tiny_bundle_dir: Path, tiny_checkpoint: Path) -> None:
    m = read_manifest(tiny_bundle_dir)
    assert m.name == tiny_bundle_dir.name
    assert m.architecture == TINY_ARCH
    assert m.pretrained == "checkpoint"
    assert m.checkpoint_sha256 == sha256_file(tiny_checkpoint)
    assert m.embed_dim == 32
    assert m.image.size == (64, 64)
    assert m.image.resize_mode == "shortest" and m.image.interpolation == "bicubic"
    assert m.text.context_length == 77 and m.text.vocab_size == 49408
    assert (m.text.sot_token_id, m.text.eot_token_id, m.text.pad_token_id) == (49406, 49407, 0)
    assert m.text.dynamic_sequence is True
    assert m.precisions == ["fp32", "fp16", "int8"]
    model, _ = _tiny_model(tiny_checkpoint)
    assert m.logit_scale == pytest.approx(model.logit_scale.exp().item())
    assert m.logit_bias is None
    assert set(m.versions) >= {"torch", "open_clip", "onnx", "onnxruntime", "clip_rt"}
    assert datetime.fromisoformat(m.created).utcoffset().total_seconds() == 0
    assert any(n.startswith("int8:") for n in m.notes) and any(n.startswith("fp16:") for n in m.notes)


def test_the_stored_fp32_embeddings_are_the_runtime_fp32_graphs_on_the_sample_inputs(tiny_bundle_dir: Path) -> None:
    """What the derived-mode check compares with: exactly what the bundle's fp32 graphs give the
    runtime's own preparation of the export's sample inputs."""
    import clip_rt
    from clip_rt.bundle.manifest import read_manifest
    from clip_rt.engine.backends.evidence import load_reference, sample_inputs

    m = read_manifest(tiny_bundle_dir)
    ref = m.parity_reference
    assert ref is not None and ref.file in m.files
    model = clip_rt.load(tiny_bundle_dir, precision="fp32", backend="onnxruntime", cache=False)
    image = load_reference(tiny_bundle_dir / ref.file, "image", ref.image, m.embed_dim)
    text = load_reference(tiny_bundle_dir / ref.file, "text", ref.text, m.embed_dim)
    np.testing.assert_allclose(model.encode_pixels(sample_inputs(m, "image")), image, atol=1e-6)
    ids = sample_inputs(m, "text", model.tokenizer())
    np.testing.assert_allclose(model.session("text").run({"input_ids": ids})[0], text, atol=1e-6)


def test_files_map_covers_every_file_with_checksums(tiny_bundle_dir: Path) -> None:
    m = read_manifest(tiny_bundle_dir)
    on_disk = {p.name for p in tiny_bundle_dir.iterdir()} - {"manifest.json"}
    assert set(m.files) == on_disk
    for name, entry in m.files.items():
        path = tiny_bundle_dir / name
        assert entry.bytes == path.stat().st_size
        assert entry.sha256 == sha256_file(path)
    verify_files(tiny_bundle_dir, m)
    graph_files = {g.file for encs in m.graphs.values() for g in encs.values()}
    assert graph_files | {"tokenizer.json", "parity_reference.npz"} == on_disk
    assert not [p for p in tiny_bundle_dir.parent.iterdir() if p.name.startswith(".")]


def test_parity_figures_are_recorded_within_tolerance(tiny_bundle_dir: Path) -> None:
    m = read_manifest(tiny_bundle_dir)
    for precision in ("fp32", "fp16", "int8"):
        for encoder in ("image", "text"):
            fig = m.parity[precision][encoder]
            assert fig.passed
            # the tiny model's int8 cosine bound is relaxed by the fixture (conftest.tiny_bundle_dir)
            relaxed = {"min_cosine": 0.995} if precision == "int8" else {}
            want = dict(validate.tolerance_for(precision, encoder), **relaxed)
            assert fig.tolerance == want
            # images: 8 scenes + 12 held-out photos + a crop of each; text: 10 prompts + 20 labels, full and trimmed
            assert fig.samples == (32 if encoder == "image" else 60)
            assert fig.top1_agreement is not None and fig.batch_max_abs_diff is not None
            assert fig.min_cosine >= want.get("min_cosine", 0.0)
    assert m.parity["fp32"]["image"].max_abs_diff <= 1e-4
    assert m.parity["fp32"]["text"].max_abs_diff <= 1e-4
    # quantisation really happened: int8 is not a copy of fp32
    assert m.parity["int8"]["image"].max_abs_diff > m.parity["fp32"]["image"].max_abs_diff


def test_checkpoint_export_equals_torch(tiny_bundle_dir: Path, tiny_checkpoint: Path) -> None:
    model, tokenizer = _tiny_model(tiny_checkpoint)
    m = read_manifest(tiny_bundle_dir)
    gen = torch.Generator().manual_seed(7)
    pixels = torch.randn(3, 3, 64, 64, generator=gen)
    prompts = ["a cat", "two dogs playing in the snow", "x"]
    ids = tokenizer(prompts)
    with torch.no_grad():
        want_img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
        want_txt = torch.nn.functional.normalize(model.encode_text(ids), dim=-1).numpy()
    cpu = ["CPUExecutionProvider"]
    image = ort.InferenceSession(str(tiny_bundle_dir / m.graph("fp32", "image").file), providers=cpu)
    text = ort.InferenceSession(str(tiny_bundle_dir / m.graph("fp32", "text").file), providers=cpu)
    assert np.abs(image.run(None, {"pixel_values": pixels.numpy()})[0] - want_img).max() <= 1e-4
    assert np.abs(image.run(None, {"pixel_values": pixels.numpy()[:1]})[0] - want_img[:1]).max() <= 1e-4
    ids_np = ids.numpy()
    assert np.abs(text.run(None, {"input_ids": ids_np})[0] - want_txt).max() <= 1e-4
    longest = int((ids_np != 0).sum(axis=1).max())
    assert np.abs(text.run(None, {"input_ids": ids_np[:, :longest]})[0] - want_txt).max() <= 1e-4
    for precision in ("fp16", "int8"):
        sess = ort.InferenceSession(str(tiny_bundle_dir / m.graph(precision, "text").file), providers=cpu)
        got = sess.run(None, {"input_ids": ids_np[:, :longest]})[0]
        assert got.dtype == np.float32
        # the tiny model's int8 bound: see conftest
        bound = 0.995 if precision == "int8" else validate.TOLERANCES[precision]["min_cosine"]
        assert float(np.min(np.sum(got * want_txt, axis=1))) >= bound


def test_fp16_graphs_load_with_all_optimisations(tiny_bundle_dir: Path) -> None:
    # ORT 1.32 crashed (SIGSEGV) building fp16 LayerNormalization at level ALL: a subprocess
    # keeps a regression from taking the test run down.
    m = read_manifest(tiny_bundle_dir)
    code = (
        "import onnxruntime as ort, sys\n"
        "o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
        "for f in sys.argv[1:]: ort.InferenceSession(f, o, providers=['CPUExecutionProvider'])\n"
    )
    files = [str(tiny_bundle_dir / g.file) for g in m.graphs["fp16"].values()]
    assert subprocess.run([sys.executable, "-c", code, *files], timeout=120).returncode == 0


# -- failures leave nothing ---------------------------------------------------------------------
@pytest.mark.slow
def test_parity_failure_raises_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(validate.TOLERANCES, "fp32", {"max_abs_diff": 0.0})
    out = tmp_path / "out" / "tiny"
    with pytest.raises(ParityError) as err:
        export_bundle(TINY_ARCH, "none", output=out, model_config=TINY_CONFIG, seed=0)
    msg = str(err.value)
    assert "fp32 image" in msg and "max abs diff" in msg and "tolerance 0" in msg
    assert _leftovers(out.parent) == []


@pytest.mark.slow
def test_corrupted_int8_graph_fails_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    real_int8 = convert.to_int8

    def broken_int8(src: Path, dst: Path, encoder: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        record = real_int8(src, dst, encoder, *args, **kwargs)
        model = onnx.load(str(src))
        for init in model.graph.initializer:  # scramble the weights: a wrong graph, still loadable
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim == 2:
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[::-1]), init.name))
        onnx.save(model, str(dst))
        return record

    monkeypatch.setattr(convert, "to_int8", broken_int8)
    out = tmp_path / "tiny"
    with pytest.raises(ParityError, match=r"int8 image graph .*min cosine .* < tolerance 0\.999"):
        export_bundle(TINY_ARCH, "none", precisions=("int8",), output=out, model_config=TINY_CONFIG, seed=0)
    assert _leftovers(tmp_path) == []


def test_offline_tag_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch, clip_home: Path) -> None:
    load.resolve("ViT-B-32", "none")  # warm imports: the figure is the export's own time
    for offline in ("1", None):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:  # no offline flag: the reachability probe must answer quickly on its own
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setattr(load, "_hub_host", lambda: "hub.clip-rt-test.invalid")
        start = time.monotonic()
        with pytest.raises(ExportError) as err:
            export_bundle("ViT-B-32", "laion2b_s34b_b79k")
        elapsed = time.monotonic() - start
        assert elapsed < 10, f"offline failure took {elapsed:.1f} s"
        assert not isinstance(err.value, ParityError)
        msg = str(err.value)
        assert "could not fetch the weights" in msg and "--pretrained PATH" in msg
    assert _leftovers(clip_home / "models") == []


@pytest.mark.slow
def test_tag_weights_in_the_hub_cache_are_used_offline(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    code = (
        "from clip_rt_export.load import fetch_tag_weights\n"
        "print(fetch_tag_weights('ViT-B-32', 'laion2b_s34b_b79k', print))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(snapshot / "open_clip_pytorch_model.bin")


@pytest.mark.slow
def test_sigint_mid_export_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    cmd = [
        sys.executable,
        "-c",
        "from clip_rt.cli import main; main()",
        "export",
        TINY_ARCH,
        "--model-config",
        str(TINY_CONFIG),
        "--pretrained",
        "none",
        "--seed",
        "0",
        "-o",
        str(out),
        "--precision",
        "fp32",
        "--precision",
        "fp16",
        "--precision",
        "int8",
    ]
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        staging = tmp_path / f".bundle.tmp-{proc.pid}"
        deadline = time.monotonic() + 180
        while not (staging.is_dir() and any(staging.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == code, stderr
        assert "interrupted" in stderr
        assert _leftovers(tmp_path) == []


def test_existing_target_needs_force_and_force_replaces(
    tmp_path: Path, tiny_bundle_dir: Path, tiny_checkpoint: Path
) -> None:
    target = tmp_path / "b"
    shutil.copytree(tiny_bundle_dir, target)
    with pytest.raises(ExportError, match="already exists .*--force"):
        export_bundle(TINY_ARCH, str(tiny_checkpoint), output=target, model_config=TINY_CONFIG)
    stranger = tmp_path / "not-a-bundle"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a clip-rt bundle"):
        export_bundle(TINY_ARCH, str(tiny_checkpoint), output=stranger, model_config=TINY_CONFIG, force=True)
    assert (stranger / "notes.txt").read_text() == "mine"
    export_bundle(TINY_ARCH, str(tiny_checkpoint), output=target, model_config=TINY_CONFIG, force=True)
    m = read_manifest(target)
    assert m.precisions == ["fp32"]
    assert sorted(p.name for p in target.iterdir()) == [
        "image_fp32.onnx",
        "manifest.json",
        "parity_reference.npz",
        "text_fp32.onnx",
        "tokenizer.json",
    ]
    assert _leftovers(tmp_path) == ["b", "not-a-bundle"]


@pytest.mark.slow
def test_large_models_use_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_rt_export import graphs

    monkeypatch.setattr(graphs, "EXTERNAL_DATA_THRESHOLD", 0)  # treat the tiny model as a > 2 GB one
    bundle = export_bundle(
        TINY_ARCH,
        "none",
        precisions=("fp32", "fp16", "int8"),
        output=tmp_path / "big",
        model_config=TINY_CONFIG,
        seed=0,
        int8_min_cosine=0.995,
    )  # tiny model: see conftest
    m = read_manifest(bundle)
    verify_files(bundle, m)
    for precision in m.precisions:
        for encoder, graph in m.graphs[precision].items():
            assert graph.external_data == (f"{graph.file}.data",)
            assert set(graph.external_data) <= set(m.files)
            assert m.parity[precision][encoder].passed
            sess = ort.InferenceSession(str(bundle / graph.file), providers=["CPUExecutionProvider"])
            assert sess.get_outputs()[0].name in ("image_embeds", "text_embeds")


# -- argument handling --------------------------------------------------------------------------
def test_precisions_are_checked_and_ordered_and_include_fp32() -> None:
    assert normalize_precisions(["int8", "fp32", "fp16", "int8"]) == ["fp32", "fp16", "int8"]
    assert normalize_precisions("FP16") == ["fp32", "fp16"]
    assert normalize_precisions(["int8"]) == ["fp32", "int8"]
    assert normalize_precisions([]) == ["fp32"]
    with pytest.raises(InputError, match="bf16"):
        normalize_precisions(["bf16"])


def test_model_names_and_default_tags() -> None:
    assert load.resolve_model_name("ViT-B/32", None) == ("ViT-B-32", "openai")
    assert load.resolve_model_name("ViT-B-32", None) == ("ViT-B-32", "openai")
    assert load.resolve_model_name("RN50", "none") == ("RN50", "none")
    with pytest.raises(InputError, match="laion2b_s13b_b82k"):
        load.resolve_model_name("convnext_base_w", None)
    with pytest.raises(InputError, match="unknown model"):
        load.resolve_model_name("ViT-Q-99", None)
    with pytest.raises(InputError, match="neither a tag"):
        load.resolve("ViT-B-32", "no-such-tag-or-file")
    arch, source = load.resolve("ViT-B/32", "none")
    assert (arch, source.kind, source.store_tag) == ("ViT-B-32", "random", "random")
    arch, source = load.resolve("RN50", __file__)
    assert (source.kind, source.store_tag) == ("checkpoint", "test_export")


def test_default_output_is_the_store(tiny_checkpoint: Path, clip_home: Path) -> None:
    from clip_rt_export.api import default_output

    arch, source = load.resolve(TINY_ARCH, str(tiny_checkpoint), TINY_CONFIG)
    assert default_output(arch, source) == clip_home / "models" / "tiny-clip-tiny"
    arch, source = load.resolve("ViT-B/32", "openai")
    assert default_output(arch, source) == clip_home / "models" / "ViT-B-32-openai"


def test_hf_tokenizer_models_need_their_tokenizer(tmp_path: Path) -> None:
    """Offline, without --tokenizer and with nothing in the Hugging Face cache: a fast, clear
    error naming the tokenizer and how to pass it; nothing written."""
    for name, kind in (
        ("ViT-B-16-SigLIP", "T5 SentencePiece"),
        ("ViT-B-16-SigLIP2", "Gemma SentencePiece"),
        ("xlm-roberta-base-ViT-B-32", "Hugging Face xlm-roberta-base"),
    ):
        t0 = time.monotonic()
        with pytest.raises(ExportError, match=f"needs the {kind}.*--tokenizer DIR"):
            export_bundle(name, "none", output=tmp_path / name)
        assert time.monotonic() - t0 < 10  # before the model is built
    assert _leftovers(tmp_path) == []
    with pytest.raises(InputError, match="uses open_clip's built-in CLIP BPE tokenizer"):
        export_bundle(TINY_ARCH, "none", model_config=TINY_CONFIG, output=tmp_path / "t", tokenizer=tmp_path)
    odd = tmp_path / "odd.json"
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"].update(hf_tokenizer_name="bert-base-uncased", tokenizer_mode="clips")
    odd.write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="not supported yet: open_clip tokenizer_mode 'clips'"):
        export_bundle("odd-arch", "none", model_config=odd, output=tmp_path / "o")


def test_bad_model_config_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(InputError, match="vision_cfg"):
        export_bundle("bad-arch", model_config=bad, output=tmp_path / "o")
    with pytest.raises(InputError, match="no such file"):
        export_bundle("bad-arch", model_config=tmp_path / "missing.json", output=tmp_path / "o")


@pytest.mark.slow
def test_text_tower_without_causal_mask_exports_full_context(tmp_path: Path) -> None:
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"].update({"no_causal_mask": True, "pool_type": "last", "context_length": 16})
    path = tmp_path / "nocausal.json"
    path.write_text(json.dumps(cfg))
    bundle = export_bundle("tiny-nocausal", "none", output=tmp_path / "b", model_config=path, seed=1)
    m = read_manifest(bundle)
    assert m.text.dynamic_sequence is False and m.text.context_length == 16
    sess = ort.InferenceSession(str(bundle / "text_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert list(sess.get_inputs()[0].shape)[1] == 16


def test_seeded_random_weights_are_deterministic() -> None:
    arch, source = load.resolve(TINY_ARCH, "none", TINY_CONFIG)
    a, b, c = (load.load_model(arch, source, seed=s) for s in (3, 3, 4))
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert "random weights (seed 3)" in a.notes


def test_open_clip_training_checkpoints_load(tmp_path: Path, tiny_checkpoint: Path) -> None:
    # open_clip's training script saves {"epoch", "state_dict"} with DDP's "module." prefixes.
    plain = torch.load(tiny_checkpoint, weights_only=True)
    wrapped = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in plain.items()}}, wrapped)
    arch, source = load.resolve(TINY_ARCH, str(wrapped), TINY_CONFIG)
    assert (source.kind, source.store_tag) == ("checkpoint", "epoch_3")
    loaded = load.load_model(arch, source).model.state_dict()
    assert all(torch.equal(loaded[k], plain[k]) for k in plain)


# -- real architectures -------------------------------------------------------------------------
@pytest.mark.slow
def test_vitb32_bundle(vitb32_bundle_dir: Path, vitb32_checkpoint: Path) -> None:
    m = read_manifest(vitb32_bundle_dir)
    assert (m.architecture, m.embed_dim, m.image.size) == ("ViT-B-32", 512, (224, 224))
    assert m.text.dynamic_sequence and m.parity["fp32"]["image"].max_abs_diff <= 1e-4
    assert m.checkpoint_sha256 == sha256_file(vitb32_checkpoint)


@pytest.mark.slow
def test_rn50_random_export_all_precisions(tmp_path: Path) -> None:
    start = time.monotonic()
    bundle = export_bundle("RN50", "none", precisions=("fp32", "int8", "fp16"), output=tmp_path / "rn50", seed=0)
    elapsed = time.monotonic() - start
    m = read_manifest(bundle)
    assert m.precisions == ["fp32", "fp16", "int8"]
    assert m.embed_dim == 1024 and m.image.size == (224, 224)
    assert all(fig.passed for encs in m.parity.values() for fig in encs.values())
    print(f"RN50 fp32+fp16+int8 export: {elapsed:.0f} s")


def _old_bundle_and_stage(tmp_path: Path):  # noqa: ANN202
    """A previous bundle at tmp_path/bundle and a finished staging folder for --force."""
    from types import SimpleNamespace

    from clip_rt_export.bundle import StagingDir

    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text('{"old": true}')
    (target / "graph.onnx").write_bytes(b"old graph")
    stage = StagingDir(target, force=True)
    manifest = SimpleNamespace(write=lambda d: (d / "manifest.json").write_text('{"new": true}'))  # duck-typed
    return target, stage, manifest


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, "ExportInterrupted", OSError])
def test_interrupted_force_swap_puts_the_old_bundle_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: object
) -> None:
    from clip_rt_export.bundle import ExportInterrupted

    exc_type = ExportInterrupted if interrupt == "ExportInterrupted" else interrupt
    target, stage, manifest = _old_bundle_and_stage(tmp_path)
    real_replace, calls = os.replace, []

    def replace_interrupted_at_second(src, dst):  # noqa: ANN001, ANN202
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old bundle already aside, new one not yet in place
            raise exc_type(signal.SIGINT) if exc_type is ExportInterrupted else exc_type("interrupted")
        return real_replace(src, dst)

    with pytest.raises(exc_type):
        with stage:
            (stage.path / "graph.onnx").write_bytes(b"new graph")
            monkeypatch.setattr(os, "replace", replace_interrupted_at_second)
            stage.commit(manifest)
    monkeypatch.undo()
    assert calls[:2] == [("bundle", f".bundle.old-{os.getpid()}"), (f".bundle.tmp-{os.getpid()}", "bundle")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert (target / "manifest.json").read_text() == '{"old": true}'
    assert (target / "graph.onnx").read_bytes() == b"old graph"


def test_signal_during_force_swap_waits_for_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_rt_export.bundle import ExportInterrupted, interrupt_handlers

    target, stage, manifest = _old_bundle_and_stage(tmp_path)
    real_replace, calls = os.replace, []
    # What the handlers must put back: Python's default handler, or SIG_IGN in a process started
    # in the background by a non-interactive shell (SIGINT is inherited ignored there).
    before = signal.getsignal(signal.SIGINT)

    def replace_with_sigint_between(src, dst):  # noqa: ANN001, ANN202
        calls.append(Path(dst).name)
        out = real_replace(src, dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives with the old bundle aside
        return out

    with pytest.raises(ExportInterrupted, match="just after the bundle was written"):
        with interrupt_handlers(), stage:
            (stage.path / "graph.onnx").write_bytes(b"new graph")
            monkeypatch.setattr(os, "replace", replace_with_sigint_between)
            stage.commit(manifest)
    monkeypatch.undo()
    assert len(calls) == 2  # the signal did not cut the swap in two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert (target / "graph.onnx").read_bytes() == b"new graph"
    assert signal.getsignal(signal.SIGINT) is before


def test_bundle_files_get_the_mode_of_a_plain_file(tmp_path: Path) -> None:
    """A writer that makes its file 0600 (onnx's external data) does not leave it so."""
    target, stage, manifest = _old_bundle_and_stage(tmp_path)
    old_umask = os.umask(0o022)
    try:
        with stage:
            data = stage.path / "graph.onnx.data"
            data.write_bytes(b"weights")
            data.chmod(0o600)
            stage.commit(manifest)
    finally:
        os.umask(old_umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()} == {
        "graph.onnx.data": 0o644,
        "manifest.json": 0o644,
    }
