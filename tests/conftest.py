"""Shared test set-up. Every test gets its own clip-rt home, so nothing touches ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Hubs are unreachable in CI: make any accidental download fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The automatic backend choice depends on the CPU: tests run as on an AVX2 CPU (nothing measured:
# onnxruntime, the bundle's fastest gated precision) so that it is the same on every host. Set
# here, not only in the fixture below, so that module-scoped fixtures and the servers, Ray
# workers and subprocesses they start see it too.
TEST_CPU_FLAGS = "x86_64: avx2 fma"
os.environ["CLIP_RT_CPU_FLAGS"] = TEST_CPU_FLAGS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# The session's exports (below): a test that uses one is slow, whatever its own marks say, so
# that `pytest -m "not slow"` (the edit loop, CONTRIBUTING.md) never waits for torch.
EXPORTING_FIXTURES = frozenset({"tiny_checkpoint", "tiny_bundle_dir", "vitb32_checkpoint", "vitb32_bundle_dir"})


# Under pytest-xdist (README: `pytest -q -n 2 --dist loadgroup`) each group runs on one worker,
# so a module's fixtures are built once: a test's group is its file, but every test of the
# ViT-B-32 export shares one group (built once, not once per worker), and the Ray tests share
# one (one Ray cluster on the machine at a time); each model family of test_model_families.py
# (one export each) is a group of its own. The longest groups go first, so that the workers
# finish together rather than one of them starting a long export last.
VITB32_FIXTURES = frozenset({"vitb32_checkpoint", "vitb32_bundle_dir", "vitb32"})
FAMILY_FIXTURES = ("mobileclip", "siglip", "siglip2", "xlmr")  # test_model_families.py's exports
RAY_FILES = frozenset({"test_scale_ray.py", "test_scale_cluster.py", "test_adapt_ray.py"})
LONGEST_GROUPS = ("mobileclip", "ray", "test_export.py", "siglip", "xlmr", "siglip2", "vitb32-export")


def _group(item: pytest.Item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    if VITB32_FIXTURES & fixtures:
        return "vitb32-export"
    if item.path.name == "test_model_families.py":
        return next((name for name in FAMILY_FIXTURES if name in fixtures), item.path.name)
    return "ray" if item.path.name in RAY_FILES else item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    rank = {group: i for i, group in enumerate(LONGEST_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order otherwise


def pytest_configure(config: pytest.Config) -> None:
    # xdist otherwise orders the groups by their number of tests, not by their length.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.fixture
def hide_module(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """``hide_module("av")``: importing that package (or a submodule) raises ImportError, as
    where an optional extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def hide(name: str) -> None:
        def fake_import(mod: str, *args: object, **kwargs: object) -> object:
            if mod == name or mod.startswith(name + "."):
                raise ImportError(f"No module named {name!r}")
            return real_import(mod, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)

    return hide


@pytest.fixture(autouse=True)
def cpu_flags(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs as on an AVX2 CPU (a class with nothing measured: onnxruntime, the
    bundle's fastest gated precision), so the automatic backend choice is the same on every
    host; tests of the choice set CLIP_RT_CPU_FLAGS themselves."""
    monkeypatch.setenv("CLIP_RT_CPU_FLAGS", TEST_CPU_FLAGS)  # undoes a test's own setting
    return TEST_CPU_FLAGS


@pytest.fixture(autouse=True)
def clip_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("clip-rt-home")
    monkeypatch.setenv("CLIP_RT_HOME", str(home))
    monkeypatch.delenv("CLIP_RT_MODEL", raising=False)  # the built-in default model, unless a test sets one
    return home


# -- the torch-free fake bundle -------------------------------------------------------------
@pytest.fixture(scope="session")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch-free tiny bundle (real manifest, ONNX graphs, tokenizer) run by the real runtime;
    shared by every test that only reads it."""
    from clip_rt_fixtures.fake_bundle import build_fake_bundle

    return build_fake_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


# -- exported bundles (export stage; skipped where torch / open_clip are not installed) -------
TINY_CONFIG = REPO / "tests" / "data" / "tiny-clip.json"
TINY_ARCH = "tiny-clip"
TINY_INT8_MIN_COSINE = 0.995  # the tiny model's int8 gate (see tiny_bundle_dir)


def _save_random_checkpoint(arch: str, path: Path, seed: int, model_config: Path | None = None) -> Path:
    """open_clip *arch* with seeded random weights, saved as ``torch.save(model.state_dict())``."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    if model_config is not None:
        from clip_rt_export.load import resolve

        resolve(arch, "none", model_config)  # registers the config with open_clip
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random checkpoint of the tiny test architecture (tests/data/tiny-clip.json)."""
    return _save_random_checkpoint(TINY_ARCH, tmp_path_factory.mktemp("tiny-ckpt") / "tiny.pt", 0, TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny architecture exported from ``tiny_checkpoint`` in fp32, int8 and fp16 (about 20 s)."""
    from clip_rt_export import export_bundle

    out = tmp_path_factory.mktemp("tiny-bundle") / "tiny-clip-tiny"
    # A 64-wide, 2-layer model rounds more under int8 than a real one: its static int8 text
    # graph reaches min cosine ~0.998 (ViT-B-32's: see docs/export.md), under the default gate
    # of 0.999, so it is exported with the recorded override; the default gate is exercised in
    # tests/test_int8_static.py.
    return export_bundle(
        TINY_ARCH,
        pretrained=str(tiny_checkpoint),
        precisions=("fp32", "int8", "fp16"),
        output=out,
        model_config=TINY_CONFIG,
        int8_min_cosine=TINY_INT8_MIN_COSINE,
    )


@pytest.fixture(scope="session")
def vitb32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ViT-B-32 architecture, random weights (seed 0), saved with torch.save(state_dict)."""
    return _save_random_checkpoint("ViT-B-32", tmp_path_factory.mktemp("vitb32-ckpt") / "vitb32.pt", 0)


@pytest.fixture(scope="session")
def vitb32_bundle_dir(tmp_path_factory: pytest.TempPathFactory, vitb32_checkpoint: Path) -> Path:
    """ViT-B-32 exported (fp32) from ``vitb32_checkpoint`` (about a minute on 2 cores)."""
    from clip_rt_export import export_bundle

    out = tmp_path_factory.mktemp("vitb32-bundle") / "ViT-B-32-random"
    return export_bundle("ViT-B-32", pretrained=str(vitb32_checkpoint), precisions=("fp32",), output=out)
