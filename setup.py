"""Package discovery, which pyproject.toml cannot express alone: every package under clip_rt/
(found, so a new subpackage is never left out of the wheel) plus clip_rt_export, clip_rt_models
and clip_rt_fixtures, which live in export/, models/ and fixtures/ (package-dir in
pyproject.toml). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["clip_rt", "clip_rt.*"]), "clip_rt_export", "clip_rt_models", "clip_rt_fixtures"]
)
