"""The backend layer: onnxruntime and OpenVINO under one contract, parity between them, the
throughput queue, batch independence, and the model/CLI surfaces that say what ran.

OpenVINO tests skip (with the reason) where the ``[openvino]`` extra is not installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import clip_rt
from clip_rt.cli import main
from clip_rt.engine.backends import open_backend
from clip_rt.engine.backends.choose import EncoderChoice
from clip_rt.engine.backends.ort import OrtBackend
from clip_rt.engine.cpu import ENV_FLAGS
from clip_rt.errors import BundleError, InputError, ProviderError
from clip_rt_fixtures.fake_bundle import build_fake_bundle

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino not installed (pip install 'clip-rt[openvino]')")
AMX_FLAGS = "x86_64: amx_tile amx_int8 amx_bf16 avx512_bf16 avx512_vnni avx512f avx2"
PROMPTS = ["a photo of a cat", "dog", "a blurry photo of the red car .", "", "a big tree"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("bundle"), precisions=("fp32",))


def pixels(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def ov_backend(path: Path, **kw: Any) -> Any:
    from clip_rt.engine.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(path, **kw)


def drain(backend: Any, batches: list[np.ndarray], name: str = "pixel_values") -> list[np.ndarray]:
    """Through the throughput queue, in order, at most queue_depth in flight (as iter_images)."""
    out, pending = [], []
    for x in batches:
        pending.append(backend.submit({name: x}))
        if len(pending) >= backend.queue_depth:
            out.append(pending.pop(0).result()[0])
    out += [p.result()[0] for p in pending]
    return out


# -- the contract on onnxruntime --------------------------------------------------------------
def test_ort_backend_keeps_the_contract(bundle: Path) -> None:
    b = OrtBackend(bundle / "image_fp32.onnx", ["cpu"])
    x = pixels(4)
    want = b.run({"pixel_values": x})[0]
    assert b.queue_depth == 1
    np.testing.assert_array_equal(b.submit({"pixel_values": x}).result()[0], want)
    d = b.describe()
    assert (d["backend"], d["graph"], d["providers"]) == ("onnxruntime", "image_fp32.onnx", ["CPUExecutionProvider"])


# -- OpenVINO ----------------------------------------------------------------------------------
def test_openvino_missing_is_a_clear_error(bundle: Path, hide_module: Any) -> None:
    hide_module("openvino")
    with pytest.raises(ProviderError, match=r"pip install 'clip-rt\[openvino\]'"):
        ov_backend(bundle / "image_fp32.onnx")


@needs_ov
def test_openvino_matches_onnxruntime_fp32_alone_batched_and_queued(bundle: Path) -> None:
    ort_b = OrtBackend(bundle / "image_fp32.onnx", ["cpu"])
    ov_b = ov_backend(bundle / "image_fp32.onnx", streams=2)
    x = pixels(8)
    want = ort_b.run({"pixel_values": x})[0]
    batched = ov_b.run({"pixel_values": x})[0]
    alone = np.concatenate([ov_b.run({"pixel_values": x[i : i + 1]})[0] for i in range(8)])
    queued = np.concatenate(drain(ov_b, [x[:3], x[3:5], x[5:]]))
    for got in (batched, alone, queued):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert ov_b.queue_depth >= 1
    d = ov_b.describe()
    assert d["backend"] == "openvino" and d["compute"] == "f32" and d["latency"]["inference_precision"] == "f32"
    assert d["throughput"]["streams"] == 2


@needs_ov
def test_openvino_runs_one_dynamic_batch_model_per_mode_and_items_agree_at_every_size(bundle: Path) -> None:
    ort_b = OrtBackend(bundle / "image_fp32.onnx", ["cpu"])
    x = pixels(7)
    want = ort_b.run({"pixel_values": x})[0]
    ov_b = ov_backend(bundle / "image_fp32.onnx", streams=2)
    assert list(ov_b._compiled) == ["latency"]  # the one compile at creation: what single calls use
    alone = np.concatenate([ov_b.run({"pixel_values": x[i : i + 1]})[0] for i in range(7)])
    three = ov_b.run({"pixel_values": x[:3]})[0]
    many = ov_b.run({"pixel_values": np.concatenate([x, x])})[0]
    assert list(ov_b._compiled) == ["latency"] and three.shape[0] == 3 and many.shape[0] == 14
    # A folder stream of batches of 3: its last batch (1 row) padded to the stream's size.
    assert ov_b.stream_depth(3) == 2 and sorted(ov_b._compiled) == ["latency", "throughput"]
    streamed = [ov_b.submit({"pixel_values": b}, batch=3).result()[0] for b in (x[:3], x[3:6], x[6:])]
    assert [len(s) for s in streamed] == [3, 3, 1]
    served = ov_b.submit({"pixel_values": x[:5]}).result()[0]  # no stream size: its own size
    np.testing.assert_allclose(alone, want, atol=1e-5)
    for got in (three, np.concatenate(streamed), served, many[:7], many[7:]):  # every size agrees with alone
        np.testing.assert_array_equal(got, alone[: len(got)])
    d = ov_b.describe()
    assert d["shapes"] == "dynamic batch" and d["throughput"]["streams"] == 2 and d["folders"].startswith("throughput")
    text = ov_backend(bundle / "text_fp32.onnx")
    assert list(text._compiled) == ["latency"]


@needs_ov
def test_openvino_compiles_only_what_the_job_uses_first(bundle: Path) -> None:
    folder = ov_backend(bundle / "image_fp32.onnx", streams=2, first="throughput")
    assert list(folder._compiled) == ["throughput"]  # a folder run never compiles the latency model
    x = pixels(8)
    got = np.concatenate(drain(folder, [x[:4], x[4:]]))
    assert list(folder._compiled) == ["throughput"] and got.shape[0] == 8
    with pytest.raises(InputError, match="first must be one of"):
        ov_backend(bundle / "image_fp32.onnx", first="eventually")


@needs_ov
def test_openvino_text_keeps_the_dynamic_sequence(bundle: Path) -> None:
    ort_b = OrtBackend(bundle / "text_fp32.onnx", ["cpu"])
    ov_b = ov_backend(bundle / "text_fp32.onnx")
    ids = np.array([[62, 3, 4, 63, 0, 0], [62, 5, 63, 0, 0, 0]], dtype=np.int64)
    for length in (6, 4, 3, 4):  # shapes change call to call, and come back
        np.testing.assert_allclose(
            ov_b.run({"input_ids": ids[:, :length]})[0], ort_b.run({"input_ids": ids[:, :length]})[0], atol=1e-5
        )


@needs_ov
def test_openvino_refuses_emulated_bf16_and_bad_settings(bundle: Path) -> None:
    with pytest.raises(ProviderError, match="bf16 arithmetic"):
        ov_backend(bundle / "image_fp32.onnx", compute="bf16", native_bf16=False)
    with pytest.raises(InputError, match="compute precision"):
        ov_backend(bundle / "image_fp32.onnx", compute="fp8")
    with pytest.raises(InputError, match="streams"):
        ov_backend(bundle / "image_fp32.onnx", streams=0)
    with pytest.raises(InputError, match="no input named"):
        ov_backend(bundle / "image_fp32.onnx").run({"pixels": pixels(1)})


@needs_ov
def test_openvino_damaged_graph_is_a_bundle_error(tmp_path: Path) -> None:
    bad = tmp_path / "image_fp32.onnx"
    bad.write_bytes(b"not a graph at all")
    with pytest.raises(BundleError, match="OpenVINO cannot compile"):
        ov_backend(bad)
    with pytest.raises(BundleError, match="no such graph"):
        ov_backend(tmp_path / "missing.onnx")


@needs_ov
def test_open_backend_follows_the_choice(bundle: Path) -> None:
    choice = EncoderChoice("image", "openvino", "bf16", "fp32", "bf16", "throughput", "test")
    b = open_backend(choice, bundle / "image_fp32.onnx", native_bf16=True)
    assert b.name == "openvino" and b.compute == "bf16"
    b.run({"pixel_values": pixels(2)})
    assert b.describe()["latency"]["inference_precision"] == "bf16"
    ort_choice = EncoderChoice("image", "onnxruntime", "fp32", "fp32", "graph", "latency", "test")
    assert open_backend(ort_choice, bundle / "image_fp32.onnx", native_bf16=False).name == "onnxruntime"


# -- the model ---------------------------------------------------------------------------------
@needs_ov
def test_model_on_openvino_equals_onnxruntime(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    from PIL import Image

    paths = []
    for i in range(11):
        p = tmp_path / f"{i}.png"
        Image.fromarray((np.random.default_rng(i).random((20 + i, 24, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    ort_m = clip_rt.load(bundle, backend="onnxruntime", cache=False)
    ov_m = clip_rt.load(bundle, backend="openvino", precision="fp32", cache=False)
    assert ov_m.plan.image.backend == "openvino" and ov_m.plan.image.folders == "throughput"
    want = ort_m.encode_image(paths)
    np.testing.assert_allclose(ov_m.encode_image(paths), want, atol=1e-5)
    streamed = np.stack([it.embedding for it in ov_m.iter_images(paths, batch_size=3)])  # the queue
    np.testing.assert_allclose(streamed, want, atol=1e-5)
    single = np.stack([ov_m.encode_image(p)[0] for p in paths[:3]])
    np.testing.assert_allclose(single, want[:3], atol=1e-5)
    np.testing.assert_allclose(ov_m.encode_text(PROMPTS), ort_m.encode_text(PROMPTS), atol=1e-5)
    rt = ov_m.runtime
    text = ov_m.describe()
    assert "image:" in text and "openvino fp32" in text and "why: asked for (backend openvino, precision fp32)" in text
    assert rt["image"]["backend"] == "openvino" and rt["image"]["running"]["backend"] == "openvino"
    assert "throughput" in rt["image"]["running"]  # iter_images compiled the throughput model
    with pytest.raises(InputError, match="needs the onnxruntime backend"):
        ov_m.encode_pixels(pixels(1), output="ortvalue")
    # The server's path: batches through the throughput queue, as many at once as it has streams.
    assert ov_m.image_streams == ov_m.session("image").queue_depth >= 1 and ort_m.image_streams == 1
    batch = pixels(4)
    np.testing.assert_allclose(ov_m.encode_pixels(batch, queued=True), ov_m.encode_pixels(batch), atol=1e-5)
    np.testing.assert_array_equal(ort_m.encode_pixels(batch, queued=True), ort_m.encode_pixels(batch))
    assert any((clip_home / "cache" / "openvino").iterdir())  # compiled models kept for the next start


@needs_ov
def test_queue_survives_bad_images_and_early_stop(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    m = clip_rt.load(bundle, backend="openvino", precision="fp32", cache=False)
    items = list(m.iter_images([good, bad, good, bad, bad, good], batch_size=2))
    assert [it.ok for it in items] == [True, False, True, False, False, True]
    stream = m.iter_images([good] * 20, batch_size=2)
    next(stream)
    stream.close()  # the requests still in flight are handed back
    assert len(list(m.iter_images([good] * 5, batch_size=2))) == 5


@needs_ov
def test_prompt_cache_keeps_backends_apart(bundle: Path) -> None:
    ort_m = clip_rt.load(bundle, backend="onnxruntime")
    ort_m.encode_text(PROMPTS)
    ov_m = clip_rt.load(bundle, backend="openvino", precision="fp32")
    assert ov_m.plan.text.cache_key == "fp32+openvino" and ort_m.plan.text.cache_key == "fp32"
    ov_m.encode_text(PROMPTS)
    assert "text" in ov_m.open_encoders  # not served from the onnxruntime entries


def test_named_backend_not_installed_fails_at_load(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_rt.engine.backends.choose as choose

    monkeypatch.setattr(choose, "installed_backends", lambda: ("onnxruntime",))
    with pytest.raises(ProviderError, match="not installed"):
        clip_rt.load(bundle, backend="openvino")
    with pytest.raises(InputError, match="unknown backend"):
        clip_rt.load(bundle, backend="tensorflow")


def test_default_precision_on_the_cpu_is_gated_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old-style bundle (dynamic int8, no quantisation record) whose int8 passed its gate
    defaults to int8 on the CPU; without a passed gate it stays on fp32."""
    from clip_rt.bundle.manifest import ParityFigure, read_manifest

    monkeypatch.setenv(ENV_FLAGS, "aarch64: asimd asimddp")  # a class with nothing measured
    b = build_fake_bundle(tmp_path / "b", precisions=("fp32", "int8"))
    assert clip_rt.load(b).precision == "fp32"  # no parity records
    m = read_manifest(b)
    for passed, want in ((False, "fp32"), (True, "int8")):
        m.parity = {
            p: {
                e: ParityFigure(0.001, 0.9999, 8, {"min_cosine": 0.99}, passed or p == "fp32")
                for e in ("image", "text")
            }
            for p in ("fp32", "int8")
        }
        m.write(b)
        model = clip_rt.load(b)
        assert model.precision == want and model.plan.image.backend == "onnxruntime"
    assert clip_rt.load(b, precision="fp32").precision == "fp32"


@needs_ov
def test_text_goes_through_the_queue_where_the_plan_says(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A text row measured faster through the throughput queue (bench.text_queue) makes a call
    with enough prompts split across the streams; the embeddings equal the latency calls'."""
    import clip_rt.engine.backends.choose as choose

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    prompts = [f"a photo of a thing number {i}" + " big" * (i % 5) for i in range(40)]
    got = {}
    for folders in ("latency", "throughput"):
        table = {
            "rows": [
                {
                    "isa": "x86-amx",
                    "encoder": "text",
                    "backend": "openvino",
                    "graph": "fp32",
                    "compute": "f32",
                    "folders": folders,
                    "score": 9.0,
                    "items_per_s": 1.0,
                    "source": "t",
                }
            ]
        }
        monkeypatch.setattr(choose, "load_table", lambda path=None, table=table: table)
        m = clip_rt.load(bundle, precision="fp32", cache=False)
        assert m.plan.text.backend == "openvino" and m.plan.text.folders == folders
        session = m.session("text")
        calls: list[str] = []
        for name in ("run", "submit"):
            original = getattr(session, name)
            monkeypatch.setattr(
                session, name, lambda *a, _n=name, _o=original, _c=calls, **k: (_c.append(_n), _o(*a, **k))[1]
            )
        got[folders] = m.encode_text(prompts)
        streams = session.queue_depth
        assert streams > 1 or (os.cpu_count() or 1) < 2  # OpenVINO's THROUGHPUT: a stream per core or two
        assert calls == (["submit"] * streams if folders == "throughput" and streams > 1 else ["run"])
        assert len(m.encode_text(prompts[:3])) == 3
    np.testing.assert_allclose(got["throughput"], got["latency"], atol=1e-6)


# -- evidence for derived modes -----------------------------------------------------------------
@needs_ov
def test_bf16_default_is_checked_against_fp32_once(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, clip_home: Path
) -> None:
    import clip_rt.engine.backends.choose as choose

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    table = {
        "rows": [
            {
                "isa": "x86-amx",
                "encoder": e,
                "backend": "openvino",
                "graph": "fp32",
                "compute": "bf16",
                "folders": "latency",
                "score": 9.0,
                "items_per_s": 1.0,
                "source": "t",
            }
            for e in ("image", "text")
        ]
    }
    monkeypatch.setattr(choose, "load_table", lambda path=None: table)
    m = clip_rt.load(bundle, cache=False)
    assert m.plan.text.needs_evidence
    m.encode_text(PROMPTS)
    text = m.runtime["text"]
    assert text["precision"] == "bf16" and not text["needs_evidence"]
    assert any("parity vs the fp32 graph" in n and "measured now" in n for n in text["notes"])
    cache = json.loads((clip_home / "cache" / "derived_parity.json").read_text())
    ((key, record),) = cache.items()
    assert ":text:openvino-" in key and record["passed"] and record["min_cosine"] >= 0.999
    again = clip_rt.load(bundle, cache=False)
    assert not again.plan.text.needs_evidence  # the verdict is read at load


@needs_ov
def test_failed_bf16_evidence_chooses_again(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip_rt.engine.backends.choose as choose
    import clip_rt.engine.backends.evidence as evidence

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    table = {
        "rows": [
            {
                "isa": "x86-amx",
                "encoder": "image",
                "backend": "openvino",
                "graph": "fp32",
                "compute": "bf16",
                "folders": "latency",
                "score": 9.0,
                "items_per_s": 1.0,
                "source": "t",
            }
        ]
    }
    monkeypatch.setattr(choose, "load_table", lambda path=None: table)
    monkeypatch.setitem(evidence.GATE, "min_cosine", 1.5)  # nothing can pass
    m = clip_rt.load(bundle, cache=False)
    with pytest.warns(RuntimeWarning, match="failed its parity"):
        m.encode_image(np.random.default_rng(3).random((16, 16, 3)).astype(np.float32))
    assert m.plan.image.backend == "onnxruntime" and m.plan.image.precision == "fp32"


def _int8_bundle(path: Path, int8_gate: float) -> Path:
    """A bundle with fp32 and (stand-in) int8 graphs whose int8 export gate is *int8_gate*."""
    b = build_fake_bundle(path, precisions=("fp32", "int8"))
    data = json.loads((b / "manifest.json").read_text())
    data["parity"] = {
        "int8": {
            e: {
                "max_abs_diff": 0.01,
                "min_cosine": 0.9995,
                "samples": 8,
                "tolerance": {"min_cosine": int8_gate},
                "passed": True,
            }
            for e in ("image", "text")
        }
    }
    (b / "manifest.json").write_text(json.dumps(data))
    return b


@needs_ov
@pytest.mark.parametrize("gate", [0.99, 1.5])
def test_int8_in_bf16_is_checked_against_fp32_with_the_int8_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_home: Path, gate: float
) -> None:
    import clip_rt.engine.backends.choose as choose

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    b = _int8_bundle(tmp_path / "b", gate)
    table = {
        "rows": [
            {
                "isa": "x86-amx",
                "encoder": "image",
                "backend": "openvino",
                "graph": "int8-dynamic",
                "compute": c,
                "folders": "latency",
                "score": score,
                "items_per_s": 1.0,
                "source": "t",
            }
            for c, score in (("bf16", 9.0), ("f32", 8.0))
        ]
    }
    monkeypatch.setattr(choose, "load_table", lambda path=None: table)
    m = clip_rt.load(b, cache=False)
    assert (m.plan.image.precision, m.plan.image.compute, m.plan.image.needs_evidence) == ("int8", "bf16", True)
    x = np.random.default_rng(3).random((16, 16, 3)).astype(np.float32)
    if gate > 1:  # nothing can pass: the int8 graph as written (f32 compute) is chosen instead
        with pytest.warns(RuntimeWarning, match="openvino int8\\+bf16 for the image encoder failed its parity"):
            m.encode_image(x)
        assert (m.plan.image.precision, m.plan.image.compute) == ("int8", "f32")
    else:
        m.encode_image(x)
        image = m.runtime["image"]
        assert (image["precision"], image["compute"], image["needs_evidence"]) == ("int8", "bf16", False)
        assert any("parity vs the fp32 graph" in n and "gate >= 0.99" in n for n in image["notes"])
    ((key, record),) = json.loads((clip_home / "cache" / "derived_parity.json").read_text()).items()
    assert ":image:openvino-" in key and ":int8+bf16:" in key and record["gate"] == {"min_cosine": gate}
    assert record["passed"] is (gate < 1) and record["reference"] == "onnxruntime fp32 graph"
    again = clip_rt.load(b, cache=False)  # the verdict is read at load
    assert not again.plan.image.needs_evidence and again.plan.image.compute == ("bf16" if gate < 1 else "f32")


def _with_stored_reference(b: Path, *, slim: bool) -> Path:
    """*b* with the fp32 embeddings of the sample inputs stored as the export stores them (and,
    *slim*, without its fp32 graphs)."""
    import hashlib

    from clip_rt.bundle.manifest import read_manifest
    from clip_rt_export.reference import write_parity_reference

    manifest = read_manifest(b)
    stored = write_parity_reference(b, manifest, {e: b / manifest.graph("fp32", e).file for e in ("image", "text")})
    data = json.loads((b / "manifest.json").read_text())
    data["parity_reference"] = {"file": stored.file, "image": stored.image, "text": stored.text}
    blob = (b / stored.file).read_bytes()
    data["files"][stored.file] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    if slim:
        for entry in data["graphs"].pop("fp32").values():
            (b / entry["file"]).unlink()
            del data["files"][entry["file"]]
    (b / "manifest.json").write_text(json.dumps(data))
    return b


@needs_ov
def test_a_slim_bundle_checks_int8_in_bf16_against_the_stored_fp32_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_home: Path
) -> None:
    """No fp32 graph to load: the export's stored embeddings are the reference, and the mode a
    slim bundle could not take before is taken once they agree."""
    import clip_rt.engine.backends.choose as choose

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    b = _with_stored_reference(_int8_bundle(tmp_path / "b", 0.99), slim=True)
    table = {
        "rows": [
            {
                "isa": "x86-amx",
                "encoder": "image",
                "backend": "openvino",
                "graph": "int8-dynamic",
                "compute": "bf16",
                "folders": "latency",
                "score": 9.0,
                "items_per_s": 1.0,
                "source": "t",
            }
        ]
    }
    monkeypatch.setattr(choose, "load_table", lambda path=None: table)
    m = clip_rt.load(b, cache=False)
    assert (m.plan.image.precision, m.plan.image.compute, m.plan.image.needs_evidence) == ("int8", "bf16", True)
    m.encode_image(np.random.default_rng(3).random((16, 16, 3)).astype(np.float32))
    assert not m.plan.image.needs_evidence
    ((_, record),) = json.loads((clip_home / "cache" / "derived_parity.json").read_text()).items()
    assert record["passed"] and record["reference"] == "the fp32 embeddings stored at export"


@needs_ov
def test_a_stored_reference_of_the_wrong_shape_is_a_bundle_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    import clip_rt.engine.backends.choose as choose

    monkeypatch.setenv(ENV_FLAGS, AMX_FLAGS)
    b = _with_stored_reference(_int8_bundle(tmp_path / "b", 0.99), slim=False)
    np.savez(b / "parity_reference.npz", image=np.zeros((3, 5), np.float32), text=np.zeros((3, 5), np.float32))
    data = json.loads((b / "manifest.json").read_text())
    blob = (b / "parity_reference.npz").read_bytes()
    data["files"]["parity_reference.npz"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (b / "manifest.json").write_text(json.dumps(data))
    table = {
        "rows": [
            {
                "isa": "x86-amx",
                "encoder": "image",
                "backend": "openvino",
                "graph": "int8-dynamic",
                "compute": "bf16",
                "folders": "latency",
                "score": 9.0,
                "items_per_s": 1.0,
                "source": "t",
            }
        ]
    }
    monkeypatch.setattr(choose, "load_table", lambda path=None: table)
    with pytest.raises(BundleError, match=r"parity_reference.npz: .*image embeddings of float32 \(3, 5\), expected"):
        clip_rt.load(b, cache=False).prepare(["image"])


# -- CLI: info and outputs' metadata ---------------------------------------------------------------
def test_info_shows_the_choice_for_an_injected_cpu(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FLAGS, "aarch64: asimd asimddp i8mm")
    res = CliRunner().invoke(main, ["info", str(bundle)])
    assert res.exit_code == 0, res.output
    assert "cpu:           arm64-i8mm (aarch64: asimd, asimddp, i8mm; from CLIP_RT_CPU_FLAGS)" in res.output
    assert "image:         onnxruntime fp32" in res.output and "nothing measured on arm64-i8mm" in res.output
    data = json.loads(CliRunner().invoke(main, ["info", str(bundle), "--json"]).output)
    assert data["runtime"]["cpu"]["class"] == "arm64-i8mm" and data["runtime"]["text"]["backend"] == "onnxruntime"


def test_info_overrides_and_their_errors(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FLAGS, "x86_64: avx512f avx512_vnni")
    res = CliRunner().invoke(main, ["info", str(bundle), "--precision", "bf16"])
    assert res.exit_code == 1 and "bf16 arithmetic" in res.output
    res = CliRunner().invoke(main, ["info", str(bundle), "--precision", "int8"])
    assert res.exit_code == 1 and "has no 'int8' graphs" in res.output
    res = CliRunner().invoke(main, ["info", str(bundle), "--backend", "onnxruntime"])
    assert res.exit_code == 0 and "asked for (backend onnxruntime)" in res.output


def test_outputs_record_what_ran(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # --report draws charts: the [report] extra (absent on arm64-check's device)
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((20, 20, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run.jsonl"
    report = tmp_path / "report"
    res = CliRunner().invoke(
        main,
        [
            "classify",
            str(folder),
            "-l",
            "cat,dog",
            "-m",
            str(bundle),
            "-o",
            str(out),
            "--backend",
            "onnxruntime",
            "--report",
            str(report),
            "--contact-sheet",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["run"]["runtime"]["text"]["backend"] == "onnxruntime"
    from clip_rt.outputs.record_output import sidecar_path

    side = json.loads(Path(sidecar_path(str(out))).read_text())
    assert side["runtime"]["image"]["backend"] == "onnxruntime" and side["runtime"]["cpu"]
    other = ["--backend", "openvino"] if HAVE_OV else []
    res = CliRunner().invoke(
        main,
        [
            "classify",
            str(folder),
            "-l",
            "cat,dog",
            "-m",
            str(bundle),
            "-o",
            str(out),
            "--resume",
            "--precision",
            "fp32",
            *other,
        ],
    )
    assert res.exit_code == 0, res.output  # the runtime record is not part of the run's identity
    idx = tmp_path / "idx"
    res = CliRunner().invoke(main, ["index", str(folder), "-o", str(idx), "-m", str(bundle)])
    assert res.exit_code == 0, res.output
    meta = json.loads((idx / "index.json").read_text())
    assert meta["runtime"]["image"]["precision"] == "fp32" and "folders" in meta["runtime"]["image"]


@needs_ov
def test_ctrl_c_after_an_openvino_model_was_released_is_a_keyboard_interrupt(bundle: Path, tmp_path: Path) -> None:
    # The CPU plugin installs an alternate signal stack on the thread that creates a Core and
    # frees it with that Core: a SIGINT then crashed the process (SIGSEGV) instead of raising.
    import subprocess
    import sys

    script = tmp_path / "ctrl_c.py"
    script.write_text(
        "import gc, os, signal, sys, time\n"
        # A process started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python then installs no handler (seen: a CI run launched with `nohup ... &`).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import numpy as np\n"
        "import clip_rt\n"
        f"m = clip_rt.load({str(bundle)!r}, backend='openvino', precision='fp32', cache=False)\n"
        "m.encode_text(['a cat'])\n"
        "list(m.iter_images([np.zeros((40, 50, 3), np.uint8)] * 5, batch_size=2))\n"
        f"m2 = clip_rt.load({str(bundle)!r}, backend='openvino', precision='fp32', cache=False)\n"
        "m2.encode_text(['a dog'])\n"
        "del m, m2\n"
        "gc.collect()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(1)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    env = {**__import__("os").environ, "CLIP_RT_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "interrupted" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
