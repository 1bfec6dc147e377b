"""Headless Chromium through Playwright's Python API, for the tests of the HTML report and the
search page.

The browser is Debian's ``chromium`` package (Playwright's own browser download is not used:
``playwright install`` needs a network these tests never have); ``CLIP_RT_CHROMIUM`` names
another executable. Tests that need it skip, saying what is missing, only where Playwright or
the browser is not installed (``.ci/run`` installs both, and sets ``CLIP_RT_REQUIRE_BROWSER=1``
so that there a missing one fails instead).

Screenshots are kept under ``$CLIP_RT_ARTIFACTS`` when set, else under pytest's temporary
folder; each test prints where it wrote them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_path() -> Optional[str]:
    given = os.environ.get("CLIP_RT_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _missing(reason: str) -> None:
    if os.environ.get("CLIP_RT_REQUIRE_BROWSER") == "1":  # CI (.ci/run) installs both: missing is a failure
        pytest.fail(f"{reason} (CLIP_RT_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def launch() -> Iterator[Any]:
    """A Chromium browser for a module's tests (a generator for a fixture), or a skip that names
    what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install 'clip-rt[test]'); the browser tests need it")
    exe = chromium_path()
    if exe is None:
        _missing(
            "no chromium executable (apt-get install chromium, or set CLIP_RT_CHROMIUM); the browser tests need it"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    root = os.environ.get("CLIP_RT_ARTIFACTS")
    folder = Path(root) / name if root else tmp_path_factory.mktemp(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Watched:
    """A page and what it did: console messages, uncaught errors, requests, dialogs."""

    page: Any
    console: list[tuple[str, str, str]] = field(default_factory=list)  # (type, text, the URL it is about)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        return [text for kind, text, _ in self.console if kind == "error"] + self.errors

    def until(self, script: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll *script* (an expression, run through CDP: the pages' CSP forbids eval, which
        Playwright's wait_for_function uses) until it is truthy; its value."""
        end = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(script)
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what or script}; "
                    f"console: {self.console}, errors: {self.errors}"
                )
            time.sleep(0.05)

    def shot(self, folder: Path, name: str) -> Path:
        path = folder / name
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


def watch(browser: Any, **context: Any) -> Watched:
    """A fresh page (its own context: no cache or storage shared between tests) under watch."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, **context)
    page = ctx.new_page()
    w = Watched(page)
    page.on("console", lambda m: w.console.append((m.type, m.text, (m.location or {}).get("url", ""))))
    page.on("pageerror", lambda e: w.errors.append(str(e)))
    page.on("request", lambda r: w.requests.append(r.url))

    def on_dialog(d: Any) -> None:
        w.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    return w


ALL_IMAGES_LOADED = (
    "((sel, least) => {{ const imgs = Array.from(document.querySelectorAll(sel)); "
    "return imgs.length >= least && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs.length; }})"
    "({sel!r}, {least})"
)


def images_loaded(selector: str, least: int = 1) -> str:
    """A script whose value is the number of images matching *selector* once there are at least
    *least* and all have loaded (a page that adds images as they arrive is not done at the first)."""
    return ALL_IMAGES_LOADED.format(sel=selector, least=least)
