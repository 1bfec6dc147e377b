"""A plain (non-editable) install gets every package and data file: the wheel, built from a
copy of the sources, holds every module under clip_rt/, export/, models/ and fixtures/ and their data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each package's files live in the source tree.
PACKAGES = {
    "clip_rt": ROOT / "clip_rt",
    "clip_rt_export": ROOT / "export",
    "clip_rt_models": ROOT / "models",
    "clip_rt_fixtures": ROOT / "fixtures",
}


def _expected() -> set[str]:
    """Every module, and every data file the packages read (JSON tables, py.typed, the bundle
    format's README beside the catalogue)."""
    want = set()
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in {".py", ".json", ".typed"} or (name == "clip_rt_models" and path.suffix == ".md"):
                want.add(f"{name}/{path.relative_to(folder).as_posix()}")
    return want


@pytest.mark.slow
def test_wheel_holds_every_package_and_data_file(tmp_path: Path) -> None:
    setuptools = pytest.importorskip("setuptools")
    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip("needs setuptools >= 70.1 (the [test] extra) to build a wheel offline")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in PACKAGES.values():
        shutil.copytree(folder, src / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(out.glob("clip_rt-*.whl"))
    names = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    missing = _expected() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {
        "clip_rt/engine/backends/choices.json",
        "clip_rt_models/catalogue.json",
        "clip_rt_models/families.json",
        "clip_rt_export/hf_text.json",
        "clip_rt/py.typed",
    } <= names
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "clip-rt = clip_rt.cli:main" in entry_points
