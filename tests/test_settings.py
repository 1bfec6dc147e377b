"""The default model (flag > CLIP_RT_MODEL > $CLIP_RT_HOME/config.toml > built-in), shown by
`clip-rt info`; "did you mean" for model names; `models --available` marks what export refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import clip_rt
from clip_rt.bundle import catalogue
from clip_rt.bundle.manifest import read_manifest
from clip_rt.bundle.store import resolve_bundle
from clip_rt.cli import main
from clip_rt.errors import InputError, ModelNotFoundError
from clip_rt.settings import BUILTIN_MODEL, MODEL_ENV, default_model, read_config
from clip_rt_fixtures.fake_bundle import build_fake_bundle


def run(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("fake") / "b", precisions=("fp32",))


@pytest.fixture()
def store(built: Path, clip_home: Path) -> Path:
    """Three copies of the tiny bundle in the store: alpha, beta, gamma."""
    for name in ("alpha", "beta", "gamma"):
        shutil.copytree(built, clip_home / "models" / name)
        m = read_manifest(clip_home / "models" / name)
        m.name = name
        m.write(clip_home / "models" / name)
    return clip_home / "models"


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def classify_model(tmp_path: Path, *extra: str) -> str:
    """The bundle a `classify` run used (from its run description)."""
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(img)
    out = tmp_path / "r.jsonl"
    result = run("classify", str(img), "-l", "a,b", "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "r.jsonl.clip-rt.json").read_text())["model"]


# -- precedence ---------------------------------------------------------------------------------
def test_builtin_default_when_nothing_is_set(clip_home: Path) -> None:
    assert default_model() == default_model(None)
    setting = default_model()
    assert (setting.value, setting.source) == (BUILTIN_MODEL, "built-in default")
    result = run("info")
    assert result.exit_code == 1
    assert f"default model {BUILTIN_MODEL} (from built-in default): no bundle named" in result.output


def test_flag_beats_env_beats_config_beats_builtin(
    store: Path, clip_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(clip_home, '# my default\nmodel = "alpha"\n')
    assert default_model().describe() == f"alpha (from {config})"
    info = run("info")
    assert info.exit_code == 0, info.output
    assert info.output.splitlines()[0] == f"default model: alpha (from {config})"
    assert f"path:          {store / 'alpha'}" in info.output
    assert json.loads(run("info", "--json").output)["default_model"] == {"value": "alpha", "source": str(config)}
    assert "default model" not in run("info", "beta").output  # an explicit bundle is just that bundle
    assert classify_model(tmp_path) == "alpha"
    assert clip_rt.load().bundle_dir == store / "alpha"

    monkeypatch.setenv(MODEL_ENV, "beta")
    assert run("info").output.splitlines()[0] == "default model: beta (from CLIP_RT_MODEL)"
    assert classify_model(tmp_path) == "beta"
    assert clip_rt.load().bundle_dir == store / "beta"

    assert classify_model(tmp_path, "-m", "gamma") == "gamma"
    assert clip_rt.load("gamma").bundle_dir == store / "gamma"
    assert default_model("gamma").source == "--model"

    monkeypatch.setenv(MODEL_ENV, "  ")  # blank counts as unset
    assert default_model().value == "alpha"


def test_a_missing_default_says_where_it_was_set(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, "delta")
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    result = run("classify", str(img), "-l", "a,b")
    assert result.exit_code == 1
    assert "default model 'delta' (from CLIP_RT_MODEL; --model picks another): no bundle named 'delta'" in result.output
    with pytest.raises(ModelNotFoundError, match="from CLIP_RT_MODEL"):
        clip_rt.load()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("model = alpha\n", "not valid TOML"),
        ("model = 3\n", "`model` must be a non-empty string"),
        ('model = ""\n', "`model` must be a non-empty string"),
        (b"model = '\xff'\n", "not UTF-8"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(clip_home: Path, text: str | bytes, needle: str) -> None:
    path = clip_home / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=needle) as err:
        read_config()
    assert str(path) in str(err.value)
    result = run("info")
    assert result.exit_code == 1 and needle in result.output
    assert run("info", "--help").exit_code == 0


def test_unknown_config_keys_warn_and_a_bom_is_fine(store: Path, clip_home: Path) -> None:
    write_config(clip_home, '\ufeffmodle = "beta"\nmodel = "alpha"\n')
    result = run("info")
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "unknown setting(s) modle" in result.stderr
    assert result.stdout.startswith("default model: alpha")


# -- names: case, did you mean ---------------------------------------------------------------
def test_case_insensitive_names_resolve(store: Path, clip_home: Path) -> None:
    assert resolve_bundle("ALPHA") == store / "alpha"
    shutil.copytree(store / "alpha", store / "ViT-B-32-openai")
    assert resolve_bundle("vit-b-32-OPENAI") == store / "ViT-B-32-openai"
    assert resolve_bundle("vit-b/32") == store / "ViT-B-32-openai"  # an alias, in any case
    shutil.copytree(store / "alpha", store / "Alpha")  # two bundles differ only in case: no guessing
    assert resolve_bundle("Alpha") == store / "Alpha"
    with pytest.raises(ModelNotFoundError, match="Did you mean: Alpha .in the store.; alpha .in the store."):
        resolve_bundle("ALPHA")


def test_did_you_mean_instead_of_an_export_hint_from_the_typo(store: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    result = run("classify", str(img), "-l", "a,b", "-m", "gamam")
    assert result.exit_code == 1
    assert "no bundle named 'gamam'" in result.output and "Did you mean: gamma (in the store)" in result.output
    assert "clip-rt export gamam" not in result.output

    with pytest.raises(ModelNotFoundError) as err:
        resolve_bundle("ViT-B-32-randon")
    msg = str(err.value)
    assert "Did you mean: ViT-B-32-random (not exported yet: `clip-rt export ViT-B-32 --pretrained none`)" in msg
    assert "randon`" not in msg and "--pretrained randon" not in msg

    for name, command in (
        ("ViT-B-32-openai", "ViT-B-32 --pretrained openai"),
        ("RN50-random", "RN50 --pretrained none"),
        ("ViT-B/32", "ViT-B-32 --pretrained openai"),
        ("ViT-B-32-laion2b_s34b_b79k", "ViT-B-32 --pretrained laion2b_s34b_b79k"),
    ):
        with pytest.raises(ModelNotFoundError, match=f"Export it first, e.g. `clip-rt export {command}`"):
            resolve_bundle(name)
    with pytest.raises(
        ModelNotFoundError, match=r"Export it first, e\.g\. `clip-rt export ViT-B-16-SigLIP --pretrained webli`"
    ):
        resolve_bundle("ViT-B-16-SigLIP-webli")
    real = catalogue.load_catalogue()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(catalogue, "load_catalogue", lambda: {**real, "unsupported": {"ViT-B-16-SigLIP": "some reason"}})
        with pytest.raises(ModelNotFoundError, match="ViT-B-16-SigLIP cannot be exported yet: some reason"):
            resolve_bundle("ViT-B-16-SigLIP-webli")
    with pytest.raises(ModelNotFoundError, match="clip-rt models --available"):
        resolve_bundle("qqqqqqqq")
    with pytest.raises(ModelNotFoundError, match="no directory './gone'"):
        resolve_bundle("./gone")


def test_export_names_case_insensitive_and_did_you_mean() -> None:
    pytest.importorskip("open_clip")
    from clip_rt_export.load import resolve_model_name

    assert resolve_model_name("vit-b-32", "none") == ("ViT-B-32", "none")
    assert resolve_model_name("vit-b/32", None) == ("ViT-B-32", "openai")
    with pytest.raises(InputError, match=r"unknown model 'ViT-B-23'.*Did you mean .*ViT-B-32"):
        resolve_model_name("ViT-B-23", "none")


# -- models --available -----------------------------------------------------------------------
def test_models_available_lists_what_export_accepts_with_families() -> None:
    data = json.loads(run("models", "--available", "--json").output)
    assert "ViT-B-32" in data["architectures"] and "RN50" in data["architectures"]
    # Hugging Face tokenizers (SigLIP, XLM-R, ...) are exported since issue 15.
    assert "ViT-B-16-SigLIP" in data["architectures"] and "webli" in data["architectures"]["ViT-B-16-SigLIP"]
    assert data["family_of"]["ViT-B-16-SigLIP"] == "SigLIP"
    assert data["unsupported"] == {
        a: {"reason": r, "tags": catalogue.architectures().get(a, [])} for a, r in catalogue.unsupported().items()
    }
    assert set(data["architectures"]).isdisjoint(data["unsupported"])
    assert set(data["architectures"]) | set(data["unsupported"]) == set(catalogue.architectures())


def test_models_available_shows_refused_architectures_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    real = catalogue.load_catalogue()
    fake = {**real, "unsupported": {"ViT-B-16-SigLIP": "open_clip tokenizer_mode 'x'"}}
    monkeypatch.setattr(catalogue, "load_catalogue", lambda: fake)
    data = json.loads(run("models", "--available", "--json").output)
    assert "ViT-B-16-SigLIP" not in data["architectures"] and "ViT-B-32" in data["architectures"]
    assert data["unsupported"]["ViT-B-16-SigLIP"] == {
        "reason": "open_clip tokenizer_mode 'x'",
        "tags": real["architectures"]["ViT-B-16-SigLIP"],
    }
    text = run("models", "--available").output
    supported, refused = text.split("not supported yet")
    assert not any(line.split()[:1] == ["ViT-B-16-SigLIP"] for line in supported.splitlines())
    assert "  ViT-B-32 " in supported
    assert any(line.split()[:1] == ["ViT-B-16-SigLIP"] and "tokenizer_mode" in line for line in refused.splitlines())


@pytest.mark.parametrize(
    "arch, cfg, reason",
    [
        ("ViT-B-32", {"text_cfg": {}}, None),
        ("ViT-B-16-SigLIP", {"text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}, None),
        ("xlm-roberta-base-ViT-B-32", {"text_cfg": {"hf_tokenizer_name": "xlm-roberta-base"}}, None),
        ("ViT-B-16-SigLIP-custom", {"text_cfg": {}}, "SigLIP config without hf_tokenizer_name"),
        ("X", {"text_cfg": {"hf_tokenizer_name": "t", "tokenizer_mode": "clips"}}, "tokenizer_mode 'clips'"),
        ("X", {"text_cfg": {"tokenizer_kwargs": {"reduction_mask": "random"}}}, "reduction mask"),
        ("X", {"text_cfg": {"tokenizer_kwargs": {"clean": "whitespace"}}}, "'whitespace' text cleaning"),
        ("X", None, "no model config"),
    ],
)
def test_the_export_rule_refuses_only_what_clip_rt_cannot_reproduce(arch: str, cfg: object, reason: object) -> None:
    from clip_rt_export.support import unsupported_reason

    got = unsupported_reason(arch, cfg)  # type: ignore[arg-type]
    assert got is None if reason is None else (got is not None and str(reason) in got)


@pytest.mark.slow
def test_the_catalogue_marks_agree_with_the_export_check() -> None:
    open_clip = pytest.importorskip("open_clip")
    from clip_rt.errors import ExportError
    from clip_rt_export.load import check_tokenizer_supported

    if open_clip.__version__ != catalogue.load_catalogue()["open_clip_version"]:
        pytest.skip("open_clip differs from the catalogue's snapshot")
    # A fresh process: other tests register configs (tiny-clip, ...) with this one's open_clip.
    done = subprocess.run(
        [sys.executable, "-m", "clip_rt_export.catalogue_build", "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr  # else: python -m clip_rt_export.catalogue_build
    assert "up to date" in done.stdout
    refused = catalogue.unsupported()
    for arch in catalogue.architectures():
        if arch in refused:
            with pytest.raises(ExportError, match="not supported yet"):
                check_tokenizer_supported(arch)
        else:
            check_tokenizer_supported(arch)
