"""Bundles are untrusted input (issue 11): hostile bundles built from fixtures/fake_bundle.py, run
through the CLI (CliRunner, one ``Error:`` line, exit 1) and the API (a named BundleError).

A hostile bundle's author writes matching checksums, so every case here re-hashes the files it
changes (``rehash``): what is tested is what the runtime does with the content, not the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import clip_rt
from clip_rt.bundle.manifest import read_manifest
from clip_rt.cli import main
from clip_rt.errors import BundleError, ChecksumError
from clip_rt_fixtures.fake_bundle import VOCAB_SIZE, build_fake_bundle, image_graph, text_graph

CLI = "import sys; sys.argv[0] = 'clip-rt'; from clip_rt.cli import main; main()"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("pristine") / "fake-clip", precisions=("fp32",))


@pytest.fixture
def bundle(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "hostile"))


def manifest_of(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, data: Any) -> None:
    (bundle / "manifest.json").write_text(json.dumps(data))


def edit(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = manifest_of(bundle)
    change(data)
    write_manifest(bundle, data)


def rehash(bundle: Path, *names: str) -> None:
    """Record the current size and sha256 of *names* (as a hostile author would)."""
    data = manifest_of(bundle)
    for name in names:
        raw = (bundle / name).read_bytes()
        data["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    write_manifest(bundle, data)


def image() -> np.ndarray:
    return np.full((20, 24, 3), (200, 40, 30), np.uint8)


def classify_cli(bundle: Path, tmp_path: Path, *extra: str) -> Any:
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    from PIL import Image

    Image.fromarray(image()).save(folder / "a.png")
    return CliRunner().invoke(main, ["classify", str(folder), "-l", "cat,dog", "-m", str(bundle), *extra])


def one_error_line(result: Any) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# -- malformed manifests -------------------------------------------------------------------------
def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        node = data
        for key in parents:
            node = node[key]
        node[last] = value

    return change


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "graphs is a list": (_set("graphs", []), "graphs: expected an object, got a list of 0 item(s)"),
    "graphs is a number": (_set("graphs", 3), "graphs: expected an object, got 3"),
    "graphs is null": (_set("graphs", None), "graphs: expected an object, got null"),
    "graphs entry is a list": (_set("graphs.fp32", ["image_fp32.onnx"]), "graphs.fp32: expected an object"),
    "graph file is a number": (
        _set("graphs.fp32.image.file", 5),
        "graphs.fp32.image.file: expected a relative file name inside the bundle",
    ),
    "files is a list": (_set("files", ["a"]), "files: expected an object, got a list of 1 item(s)"),
    "files is null": (_set("files", None), "files: expected an object, got null"),
    "file size negative": (
        _set(("files", "tokenizer.json"), {"sha256": "0" * 64, "bytes": -1}),
        "files['tokenizer.json'].bytes: expected an integer from 0 to",
    ),
    "sha256 not hex": (
        _set(("files", "tokenizer.json"), {"sha256": "xyz", "bytes": 1}),
        "files['tokenizer.json'].sha256: expected 64 lower-case hex digits",
    ),
    "parity is a list": (_set("parity", []), "parity: expected an object, got a list"),
    "parity is a number": (_set("parity", 7), "parity: expected an object, got 7"),
    "context_length a string": (
        _set("text.context_length", "16"),
        "text.context_length: expected an integer from 2 to 8192, got '16' (a string)",
    ),
    "context_length a float": (
        _set("text.context_length", 16.0),
        "text.context_length: expected an integer from 2 to 8192, got 16.0",
    ),
    "context_length 1e12": (
        _set("text.context_length", 1e12),
        "text.context_length: expected an integer from 2 to 8192, got 1000000000000.0",
    ),
    "context_length 10**12": (
        _set("text.context_length", 10**12),
        "text.context_length: expected an integer from 2 to 8192, got 1000000000000",
    ),
    "context_length true": (
        _set("text.context_length", True),
        "text.context_length: expected an integer from 2 to 8192, got true",
    ),
    "token id a string": (_set("text.eot_token_id", "63"), "text.eot_token_id: expected an integer"),
    "token id 10**30": (
        _set("text.sot_token_id", 10**30),
        "text.sot_token_id: expected an integer from 0 to 16777216, got 1" + "0" * 30,
    ),
    "token id beyond vocab": (
        _set("text.pad_token_id", VOCAB_SIZE),
        f"text.pad_token_id: {VOCAB_SIZE} is not below text.vocab_size ({VOCAB_SIZE})",
    ),
    "vocab_size 0": (_set("text.vocab_size", 0), "text.vocab_size: expected an integer from 2 to"),
    "dynamic_sequence 1": (_set("text.dynamic_sequence", 1), "text.dynamic_sequence: expected true or false, got 1"),
    "embed_dim 0": (_set("embed_dim", 0), "embed_dim: expected an integer from 1 to 65536, got 0"),
    "embed_dim 1e12": (_set("embed_dim", 1e12), "embed_dim: expected an integer from 1 to 65536, got 1000000000000.0"),
    "image.size huge": (
        _set("image.size", [100000, 100000]),
        "image.size[0]: expected an integer from 1 to 4096, got 100000",
    ),
    "image.size one value": (_set("image.size", [16]), "image.size: expected a list of 2 item(s), got 1"),
    "std zero": (_set("image.std", [0.2, 0, 0.2]), "image.std[1]: expected a finite number above 0 to 1000, got 0"),
    "resize_mode unknown": (
        _set("image.resize_mode", "fancy"),
        "image.resize_mode: expected one of shortest, longest, squash, got 'fancy' (a string)",
    ),
    "format_version true": (_set("format_version", True), "format_version: expected an integer from 1 to 2, got true"),
    "format_version 0": (_set("format_version", 0), "format_version: expected an integer from 1 to 2, got 0"),
    "format_version negative": (_set("format_version", -3), "format_version: expected an integer from 1 to 2, got -3"),
    "format_version missing": (lambda d: d.pop("format_version"), "format_version: required field is missing"),
    "name with a terminal escape": (
        _set("name", "\x1b[31mred"),
        "name: expected a string, got '\\x1b[31mred' (a string)",
    ),
    "graph not in files": (
        lambda d: d["files"].pop("text_fp32.onnx"),
        "graphs.fp32.text.file: 'text_fp32.onnx' is not listed in files",
    ),
    "no known precision": (
        _set("graphs", {"bf16": {"image": {"file": "image_fp32.onnx"}}}),
        "graphs: no graphs of a precision this clip-rt runs (fp32, fp16, int8); found bf16",
    ),
}
# Raw manifest texts that json.loads turns into NaN / infinity, or cannot load at all.
RAW: dict[str, tuple[Callable[[str], str], str]] = {
    "NaN logit_scale": (
        lambda t: re.sub(r'"logit_scale": [^,]+', '"logit_scale": NaN', t),
        "malformed manifest: logit_scale: expected a finite number above 0 to 1e+06, got nan",
    ),
    "Infinity logit_scale": (
        lambda t: re.sub(r'"logit_scale": [^,]+', '"logit_scale": Infinity', t),
        "malformed manifest: logit_scale: expected a finite number above 0 to 1e+06, got inf",
    ),
    "1e999 logit_scale": (
        lambda t: re.sub(r'"logit_scale": [^,]+', '"logit_scale": 1e999', t),
        "malformed manifest: logit_scale: expected a finite number above 0 to 1e+06, got inf",
    ),
    "NaN logit_bias": (
        lambda t: re.sub(r'"logit_bias": [^,]+', '"logit_bias": NaN', t),
        "malformed manifest: logit_bias: expected a finite number from -1e+06 to 1e+06, got nan",
    ),
    "deeply nested": (
        lambda t: t.rstrip()[:-1] + ', "notes": ' + "[" * 200_000 + "]" * 200_000 + "}",
        "manifest.json: not valid JSON (nested too deeply)",
    ),
    "5000-digit integer": (
        lambda t: re.sub(r'"embed_dim": \d+', '"embed_dim": ' + "9" * 5000, t),
        "manifest.json: not valid JSON (Exceeds the limit (4300 digits)",
    ),
    "a list": (lambda t: "[1, 2]", "manifest.json: expected a JSON object, got a list of 2 item(s)"),
    "over 16 MB": (
        lambda t: t.rstrip()[:-1] + ', "notes": ["' + "x" * (17 << 20) + '"]}',
        "bytes; a manifest is at most 16777216 bytes",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifest_api_and_cli(bundle: Path, tmp_path: Path, case: str) -> None:
    change, message = MALFORMED[case]
    edit(bundle, change)
    where = str(bundle / "manifest.json")
    with pytest.raises(BundleError) as info:
        clip_rt.load(bundle)
    assert str(info.value).startswith(f"{where}: malformed manifest: "), str(info.value)
    assert message in str(info.value)
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert line.startswith(f"Error: {where}: malformed manifest: ") and message in line
    line = one_error_line(CliRunner().invoke(main, ["info", str(bundle)]))
    assert message in line


@pytest.mark.parametrize("case", list(RAW))
def test_unparsable_or_non_finite_manifest(bundle: Path, tmp_path: Path, case: str) -> None:
    change, message = RAW[case]
    path = bundle / "manifest.json"
    path.write_text(change(path.read_text()))
    with pytest.raises(BundleError, match=re.escape(message)):
        clip_rt.load(bundle)
    assert message in one_error_line(classify_cli(bundle, tmp_path))


def test_unknown_keys_are_ignored_and_defaults_filled(bundle: Path) -> None:
    """An optional field a newer clip-rt adds (same format_version) must not break this one."""

    def change(d: dict[str, Any]) -> None:
        d["future_field"] = {"anything": [1, 2]}
        d["text"]["new_text_setting"] = True
        d["graphs"]["fp32"]["image"]["quantization"] = "static"
        for key in ("parity", "versions", "notes", "created", "logit_bias", "pretrained", "checkpoint_sha256"):
            d.pop(key, None)
        d["image"].pop("fill_color")

    edit(bundle, change)
    m = read_manifest(bundle)
    assert m.parity == {} and m.notes == [] and m.image.fill_color == 0 and m.logit_bias is None
    assert clip_rt.load(bundle).encode_text(["a cat"]).shape == (1, 8)


def test_models_lists_good_bundles_and_warns_once_per_broken_one(pristine: Path, clip_home: Path) -> None:
    store = clip_home / "models"
    shutil.copytree(pristine, store / "good")
    shutil.copytree(pristine, store / "nan-scale")
    shutil.copytree(pristine, store / "escaping")
    path = store / "nan-scale" / "manifest.json"
    path.write_text(re.sub(r'"logit_scale": [^,]+', '"logit_scale": NaN', path.read_text()))
    edit(store / "escaping", _set("text.tokenizer_file", "../good/tokenizer.json"))
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0, r.output
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["good"]
    warnings = r.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipped a broken bundle: ") for w in warnings)
    assert "escaping/manifest.json: malformed manifest: text.tokenizer_file" in warnings[0]
    assert "nan-scale/manifest.json: malformed manifest: logit_scale" in warnings[1]


# -- confinement -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("text.tokenizer_file", "../../../../etc/hostname"),
        ("text.tokenizer_file", "/etc/hostname"),
        ("graphs.fp32.image.file", "../outside.onnx"),
        ("graphs.fp32.image.file", "sub/../../outside.onnx"),
        ("graphs.fp32.image.file", "./image_fp32.onnx"),
        ("graphs.fp32.image.external_data", ["../weights.bin"]),
    ],
)
def test_paths_that_leave_the_bundle_are_refused_before_anything_is_read(
    bundle: Path, tmp_path: Path, field: str, value: Any
) -> None:
    edit(bundle, _set(field, value))
    with pytest.raises(BundleError, match=re.escape(f"malformed manifest: {field}")):
        clip_rt.load(bundle)
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert "expected a relative file name inside the bundle" in line


def test_a_files_entry_outside_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    """Today's runtime hashed any file a manifest named, and a checksum error printed its size and
    sha256 prefix: a way to probe files on the machine."""
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    edit(bundle, lambda d: d["files"].update({f"../../{tmp_path.name}/secret.txt": {"sha256": "0" * 64, "bytes": 1}}))
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert "malformed manifest: files[" in line and "secret" in line and "sha256 " not in line


@pytest.mark.parametrize("name", ["tokenizer.json", "image_fp32.onnx", "text_fp32.onnx"])
def test_a_symlink_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"elsewhere-{name}"
    shutil.move(str(bundle / name), outside)
    (bundle / name).symlink_to(outside)  # checksums still match: the content is the same
    with pytest.raises(BundleError, match=re.escape(f"{bundle / name}: resolves to {outside}, outside the bundle")):
        clip_rt.load(bundle)
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert f"resolves to {outside}, outside the bundle directory" in line
    line = one_error_line(CliRunner().invoke(main, ["info", str(bundle), "--verify"]))
    assert "outside the bundle directory" in line


def test_a_symlinked_manifest_out_of_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "manifest-elsewhere.json"
    shutil.move(str(bundle / "manifest.json"), outside)
    (bundle / "manifest.json").symlink_to(outside)
    assert "outside the bundle directory" in one_error_line(classify_cli(bundle, tmp_path))


def test_symlinks_inside_the_bundle_and_a_linked_bundle_are_fine(bundle: Path, tmp_path: Path) -> None:
    (bundle / "sub").mkdir()
    shutil.move(str(bundle / "tokenizer.json"), bundle / "sub" / "tok.json")
    (bundle / "tokenizer.json").symlink_to("sub/tok.json")
    link = tmp_path / "linked-bundle"
    link.symlink_to(bundle)
    want = clip_rt.load(bundle, cache=False).encode_text(["a photo of a cat"])
    np.testing.assert_array_equal(clip_rt.load(link, cache=False).encode_text(["a photo of a cat"]), want)


# -- ONNX external data ----------------------------------------------------------------------------
def _with_external_data(bundle: Path, location: str = "weights.bin") -> None:
    """Re-save the image graph with its weights in a companion file beside it."""
    model = onnx.load(str(bundle / "image_fp32.onnx"))
    onnx.save_model(
        model,
        str(bundle / "image_fp32.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def test_an_unlisted_external_data_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    """Today an unlisted weights.bin beside a graph was loaded without any checksum."""
    _with_external_data(bundle)
    rehash(bundle, "image_fp32.onnx")  # the graph is listed and matches; weights.bin is not listed
    message = (
        f"{bundle / 'image_fp32.onnx'}: refers to external data 'weights.bin', which the manifest does "
        "not list for this graph (listed: none); refusing to load weights that have no checksum"
    )
    with pytest.raises(BundleError, match=re.escape(message)):
        list(clip_rt.load(bundle).iter_images([image()]))
    with pytest.raises(BundleError, match=re.escape(message)):  # also without checksum verification
        list(clip_rt.load(bundle, verify=False).iter_images([image()]))
    assert one_error_line(classify_cli(bundle, tmp_path)) == f"Error: {message}"


def test_listed_external_data_loads_and_gives_the_same_embeddings(bundle: Path, pristine: Path) -> None:
    _with_external_data(bundle)
    rehash(bundle, "image_fp32.onnx", "weights.bin")
    edit(bundle, _set("graphs.fp32.image.external_data", ["weights.bin"]))
    got = clip_rt.load(bundle, cache=False).encode_image([image()])
    np.testing.assert_array_equal(got, clip_rt.load(pristine, cache=False).encode_image([image()]))
    (bundle / "weights.bin").write_bytes(b"\0" * (bundle / "weights.bin").stat().st_size)  # same size, new bytes
    with pytest.raises(ChecksumError, match=r"weights\.bin: sha256 .* does not match"):
        clip_rt.load(bundle).encode_image([image()])


def _crafted_external(bundle: Path, location: str, offset: int = 0) -> None:
    """The image graph with its weight tensor pointing at *location* (written without onnx's own
    checks, as a hostile author would)."""
    model = image_graph("fp32", 16, 8, 0)
    tensor = model.graph.initializer[0]
    raw = tensor.raw_data
    (bundle / "weights.bin").write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (bundle / "image_fp32.onnx").write_bytes(model.SerializeToString())
    rehash(bundle, "image_fp32.onnx", "weights.bin")
    edit(bundle, _set("graphs.fp32.image.external_data", ["weights.bin"]))


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/hostname", "sub/../../weights.bin", "other.bin"])
def test_external_data_the_graph_names_must_be_the_listed_file(bundle: Path, tmp_path: Path, location: str) -> None:
    _crafted_external(bundle, location)
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert (
        f"refers to external data {location!r}, which the manifest does not list for this graph "
        "(listed: weights.bin)" in line
    )


def test_external_data_onnxruntime_refuses_is_a_bundle_error(bundle: Path, tmp_path: Path) -> None:
    _crafted_external(bundle, "weights.bin", offset=10**6)  # past the end of the file
    with pytest.raises(BundleError, match=r"image_fp32\.onnx: onnxruntime cannot load this graph \(.*out of bounds"):
        list(clip_rt.load(bundle).iter_images([image()]))
    assert "onnxruntime cannot load this graph" in one_error_line(classify_cli(bundle, tmp_path))


# -- onnxruntime errors when a session is created ---------------------------------------------------
def _replace_graph(bundle: Path, name: str, model: onnx.ModelProto) -> None:
    (bundle / name).write_bytes(model.SerializeToString())
    rehash(bundle, name)


def _newer_opset(m: onnx.ModelProto) -> None:
    m.opset_import[0].version = 99


def _unknown_op(m: onnx.ModelProto) -> None:
    m.graph.node[1].op_type = "FlattenTwice"


def _unknown_domain(m: onnx.ModelProto) -> None:
    m.graph.node[1].domain = "com.example.evil"
    m.opset_import.append(helper.make_opsetid("com.example.evil", 1))


def _bad_shapes(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((5, 8), np.float32), "proj"))


def _newer_ir(m: onnx.ModelProto) -> None:
    m.ir_version = 99


ORT_FAILURES = {
    "newer opset": (_newer_opset, "Opset 99 is under development"),
    "newer IR version": (_newer_ir, "Unsupported model IR version: 99"),
    "unknown op": (_unknown_op, "No Op registered for FlattenTwice"),
    "unknown domain": (_unknown_domain, "com.example.evil:Flatten(-1) is not a registered function/op"),
    "failed shape inference": (_bad_shapes, "[ShapeInferenceError] Incompatible dimensions for matrix multiplication"),
}


@pytest.mark.parametrize("case", list(ORT_FAILURES))
def test_onnxruntime_errors_are_bundle_errors_naming_the_file(bundle: Path, tmp_path: Path, case: str) -> None:
    change, reason = ORT_FAILURES[case]
    model = image_graph("fp32", 16, 8, 0)
    change(model)
    _replace_graph(bundle, "image_fp32.onnx", model)
    prefix = f"{bundle / 'image_fp32.onnx'}: onnxruntime cannot load this graph ("
    with pytest.raises(BundleError) as info:
        list(clip_rt.load(bundle).iter_images([image()]))
    assert str(info.value).startswith(prefix) and reason in str(info.value)
    assert "onnxruntime_src" not in str(info.value)  # no C++ source location
    line = one_error_line(classify_cli(bundle, tmp_path))
    assert line.startswith("Error: " + prefix) and reason in line


def _as_unprivileged(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run *code* in a subprocess that file permissions apply to: as root, without the
    capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        cmd = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_permission_denied_is_a_bundle_error(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    (bundle / "image_fp32.onnx").chmod(0)
    code = textwrap.dedent(f"""
        import numpy as np, clip_rt
        from clip_rt.errors import BundleError
        for verify in (True, False):
            try:
                list(clip_rt.load({str(bundle)!r}, verify=verify).iter_images([np.zeros((8, 8, 3), np.uint8)]))
            except BundleError as exc:
                print(type(exc).__name__, exc)
        import sys
        sys.argv = ["clip-rt", "classify", {str(tmp_path)!r}, "-l", "cat,dog", "-m", {str(bundle)!r}]
        from clip_rt.cli import main
        main()
    """)
    from PIL import Image

    Image.fromarray(image()).save(tmp_path / "a.png")
    r = _as_unprivileged(code, {"CLIP_RT_HOME": str(clip_home)})
    out = r.stdout.splitlines()
    graph = bundle / "image_fp32.onnx"
    assert out[0] == f"BundleError {graph}: cannot read it (Permission denied)", r.stdout + r.stderr
    assert out[1].startswith(f"BundleError {graph}: ") and "Permission denied" in out[1] or "13" in out[1], out[1]
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"Error: {graph}: cannot read it (Permission denied)"]


# -- the graph disagrees with its manifest -----------------------------------------------------------
def test_image_size_disagreeing_with_the_manifest(bundle: Path, tmp_path: Path) -> None:
    _replace_graph(bundle, "image_fp32.onnx", image_graph("fp32", 32, 8, 0))  # the manifest says 16x16
    message = (
        f"{bundle / 'image_fp32.onnx'}: input 'pixel_values' has shape ['batch', 3, 32, 32]; the manifest's "
        "image height is 16 (image.size [16, 16])"
    )
    with pytest.raises(BundleError, match=re.escape(message)):
        clip_rt.load(bundle).encode_image([image()])
    assert one_error_line(classify_cli(bundle, tmp_path)) == f"Error: {message}"


def test_image_graph_with_open_size_that_fails_at_the_manifest_size(bundle: Path, tmp_path: Path) -> None:
    model = image_graph("fp32", 32, 8, 0)  # weights for 32x32 inputs, input shape left open
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    _replace_graph(bundle, "image_fp32.onnx", model)
    with pytest.raises(
        BundleError, match=r"image_fp32\.onnx: the graph fails on a 1x3x16x16 input \(image\.size \[16, 16\]\) "
    ):
        clip_rt.load(bundle).encode_image([image()])


def test_vocabulary_smaller_than_the_manifest_says(bundle: Path, tmp_path: Path) -> None:
    model = text_graph("fp32", 16, 8, 0, dynamic=True)
    table = next(t for t in model.graph.initializer if t.name == "token_embedding")
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table)[:32], "token_embedding"))
    _replace_graph(bundle, "text_fp32.onnx", model)
    message = (
        f"{bundle / 'text_fp32.onnx'}: the graph fails on token ids up to {VOCAB_SIZE - 1} "
        f"(text.vocab_size {VOCAB_SIZE}) (Gather: indices element out of data bounds"
    )
    with pytest.raises(BundleError, match=re.escape(message)):
        clip_rt.load(bundle, cache=False).encode_text(["a cat"])
    assert one_error_line(classify_cli(bundle, tmp_path)).startswith(f"Error: {message}")


def test_output_that_is_not_float(bundle: Path, tmp_path: Path) -> None:
    model = image_graph("fp32", 16, 8, 0)
    model.graph.node[-1].output[0] = "embeds_f32"
    model.graph.node.append(helper.make_node("Cast", ["embeds_f32"], ["image_embeds"], to=TensorProto.DOUBLE))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("image_embeds", TensorProto.DOUBLE, ["batch", 8]))
    _replace_graph(bundle, "image_fp32.onnx", model)
    message = (
        f"{bundle / 'image_fp32.onnx'}: output 'image_embeds' is tensor(double), the bundle format needs "
        "tensor(float) (float32 embeddings)"
    )
    assert one_error_line(classify_cli(bundle, tmp_path)) == f"Error: {message}"


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("embed_dim", 16), "output 'text_embeds' has 8 values per row, the manifest's embed_dim is 16"),
        (
            _set("text.context_length", 20),
            "input 'input_ids' takes 16 tokens, the manifest's text.context_length is 20",
        ),
        (
            _set("text.dynamic_sequence", True),
            "the manifest says text.dynamic_sequence, but input 'input_ids' has a fixed length of 16 tokens",
        ),
    ],
)
def test_manifest_settings_the_graphs_disagree_with(tmp_path: Path, change: Any, message: str) -> None:
    b = build_fake_bundle(tmp_path / "static", precisions=("fp32",), dynamic_sequence=False)
    edit(b, change)
    with pytest.raises(BundleError, match=re.escape(message)):
        clip_rt.load(b, cache=False).classify([image()], ["cat", "dog"])


def test_mismatch_is_found_before_an_existing_output_is_touched(pristine: Path, bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    assert classify_cli(pristine, tmp_path, "-o", str(out)).exit_code == 0
    before = out.read_bytes()
    _replace_graph(bundle, "image_fp32.onnx", image_graph("fp32", 32, 8, 0))
    one_error_line(classify_cli(bundle, tmp_path, "-o", str(out)))
    assert out.read_bytes() == before
    index = tmp_path / "photos.idx"
    args = ["index", str(tmp_path / "imgs"), "-o", str(index), "-m", str(bundle)]
    line = one_error_line(CliRunner().invoke(main, args))
    assert "image height is 16" in line and not index.exists()


# -- hostile tokenizer.json -------------------------------------------------------------------------
def _catastrophic_tokenizer(bundle: Path) -> None:
    data = json.loads((bundle / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}
    (bundle / "tokenizer.json").write_text(json.dumps(data))
    rehash(bundle, "tokenizer.json")


def test_a_tokenizer_that_panics_is_a_bundle_error(bundle: Path, tmp_path: Path) -> None:
    _catastrophic_tokenizer(bundle)
    model = clip_rt.load(bundle, cache=False)
    assert model.encode_text(["a cat"]).shape == (1, 8)  # harmless text still works
    message = (
        f"{bundle / 'tokenizer.json'}: the tokenizers library panicked on a text (Onig: Regex search error: "
        "retry-limit-in-match over); the bundle's tokenizer is broken or hostile"
    )
    with pytest.raises(BundleError, match=re.escape(message)):
        model.encode_text(["a" * 40 + "!"])
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")  # an image to classify: the labels fail first
    r = CliRunner().invoke(main, ["classify", str(tmp_path), "-m", str(bundle), "-l", "cat," + "a" * 40 + "!"])
    assert one_error_line(r) == f"Error: {message}"


def test_a_tokenizer_panic_prints_one_line_on_the_real_stderr(bundle: Path, tmp_path: Path, clip_home: Path) -> None:
    """Rust's panic hook writes its own message to file descriptor 2; the CLI shows one line."""
    _catastrophic_tokenizer(bundle)
    from PIL import Image

    Image.fromarray(image()).save(tmp_path / "a.png")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI,
            "classify",
            str(tmp_path / "a.png"),
            "-m",
            str(bundle),
            "-l",
            "cat," + "a" * 40 + "!",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLIP_RT_HOME": str(clip_home)},
    )
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"Error: {bundle / 'tokenizer.json'}: the tokenizers library panicked on a text "
        "(Onig: Regex search error: retry-limit-in-match over); the bundle's tokenizer "
        "is broken or hostile"
    ], r.stderr


def test_token_ids_beyond_the_vocabulary_are_a_bundle_error(bundle: Path, tmp_path: Path) -> None:
    data = json.loads((bundle / "tokenizer.json").read_text())
    data["model"]["vocab"]["cat"] = 5000  # still 64 entries: the size check alone passes
    (bundle / "tokenizer.json").write_text(json.dumps(data))
    rehash(bundle, "tokenizer.json")
    message = f"{bundle / 'tokenizer.json'}: token 'cat' has id 5000, beyond the manifest's text.vocab_size of 64"
    with pytest.raises(BundleError, match=re.escape(message)):
        clip_rt.load(bundle, cache=False).encode_text(["a dog"])
    assert one_error_line(classify_cli(bundle, tmp_path)).startswith(f"Error: {message}")


def test_an_added_token_shifting_the_special_ids_is_a_bundle_error(bundle: Path) -> None:
    data = json.loads((bundle / "tokenizer.json").read_text())
    data["added_tokens"].append(
        {
            "id": 5000,
            "content": "<evil>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
    )
    data["model"]["vocab"].pop("<unused40>")  # keep 64 tokens in all
    (bundle / "tokenizer.json").write_text(json.dumps(data))
    rehash(bundle, "tokenizer.json")
    with pytest.raises(
        BundleError,
        match=re.escape(
            f"{bundle / 'tokenizer.json'}: manifest text.eot_token_id=63 is "
            "'<evil>' in the tokenizer, expected '<end_of_text>'"
        ),
    ):
        clip_rt.load(bundle, cache=False).encode_text(["a dog"])


# -- what cached and remembered results depend on -----------------------------------------------------
WORDS = "a photo of the big red cat on a small green car"


def test_prompt_cache_is_keyed_by_the_context_length(tmp_path: Path) -> None:
    """Editing text.context_length must not reuse embeddings cached under the old one."""
    b = build_fake_bundle(tmp_path / "b", precisions=("fp32",), context_length=16)
    cached = clip_rt.load(b).encode_text([WORDS])  # 14 tokens: fits; stored in the persistent cache
    edit(b, _set("text.context_length", 6))
    with pytest.warns(UserWarning, match="truncated"):
        fresh = clip_rt.load(b, cache=False).encode_text([WORDS])
    assert not np.allclose(cached, fresh)  # the setting changes the embedding: a stale hit would be wrong
    with pytest.warns(UserWarning, match="truncated"):
        np.testing.assert_array_equal(clip_rt.load(b).encode_text([WORDS]), fresh)


def test_prompt_cache_is_keyed_by_dynamic_sequence(tmp_path: Path) -> None:
    b = build_fake_bundle(tmp_path / "b", precisions=("fp32",))
    model = clip_rt.load(b)
    model.encode_text([WORDS])
    before = model._runtime.prompt_fingerprint()
    edit(b, _set("text.dynamic_sequence", False))  # the same files (its graph takes any length)
    after = clip_rt.load(b)
    assert after._runtime.prompt_fingerprint() != before
    assert after._runtime.prompt_cache().get_many([WORDS]) == {}  # nothing cached under the new settings yet
    np.testing.assert_array_equal(after.encode_text([WORDS]), clip_rt.load(b, cache=False).encode_text([WORDS]))


def test_checksum_memo_is_not_fooled_by_a_restored_mtime(pristine: Path, bundle: Path) -> None:
    """A file rewritten with the same size and its old mtime put back (touch -r) is hashed again:
    the memo also keys on ctime and inode, which a user cannot set."""
    model = clip_rt.load(bundle)
    model.encode_image([image()])  # verified and remembered
    graph = bundle / "image_fp32.onnx"
    st = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1
    with open(graph, "r+b") as f:  # same inode, same size
        f.write(bytes(data))
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert graph.stat().st_mtime_ns == st.st_mtime_ns and graph.stat().st_size == st.st_size
    with pytest.raises(ChecksumError, match=r"image_fp32\.onnx: sha256 .* does not match"):
        clip_rt.load(bundle).encode_image([image()])


@pytest.mark.parametrize("case", ["vocabulary", "shape inference", "external data"])
def test_one_line_on_the_real_stderr(bundle: Path, tmp_path: Path, clip_home: Path, case: str) -> None:
    """onnxruntime logs failures itself on file descriptor 2; the user still sees one line."""
    if case == "vocabulary":
        model = text_graph("fp32", 16, 8, 0, dynamic=True)
        table = next(t for t in model.graph.initializer if t.name == "token_embedding")
        table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table)[:32], "token_embedding"))
        _replace_graph(bundle, "text_fp32.onnx", model)
    elif case == "shape inference":
        model = image_graph("fp32", 16, 8, 0)
        _bad_shapes(model)
        _replace_graph(bundle, "image_fp32.onnx", model)
    else:
        _crafted_external(bundle, "weights.bin", offset=10**6)
    from PIL import Image

    Image.fromarray(image()).save(tmp_path / "a.png")
    r = subprocess.run(
        [sys.executable, "-c", CLI, "classify", str(tmp_path / "a.png"), "-m", str(bundle), "-l", "cat,dog"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CLIP_RT_HOME": str(clip_home)},
    )
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "onnxruntime_src" not in lines[0], r.stderr
