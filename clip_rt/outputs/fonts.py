"""Fonts for the charts: every character of the labels and file names drawn, not a box.

matplotlib draws each glyph with the first family of ``font.family`` that has it (>= 3.6),
but it only knows the fonts in its own cache, which is built once and never refreshed: a
font installed later (``apt-get install fonts-noto-cjk``) stays invisible to it. So the
families are chosen here from what the text needs:

1. DejaVu Sans (shipped with matplotlib), then the known wide-coverage families
   (:data:`FALLBACK_FAMILIES`) that cover characters DejaVu lacks, checked against each
   font file's character map;
2. if some character is still not covered, the system's font folders are scanned once per
   process (``font_manager.findSystemFonts``, which asks fontconfig and lists the folders
   afresh) and new files are registered (``fontManager.addfont``); then every known font
   is tried for the characters left.

:class:`FontChoice` says which fonts were used, and which characters no font has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

BASE_FAMILY = "DejaVu Sans"
# Tried in this order for the characters DejaVu Sans lacks. Debian: fonts-noto-cjk,
# fonts-wqy-zenhei, fonts-droid-fallback provide the CJK ones.
FALLBACK_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Noto Sans",
    "Arial Unicode MS",
)
INSTALL_HINT = "Debian/Ubuntu: apt-get install fonts-noto-cjk"

_charmaps: dict[str, frozenset[int]] = {}
_rescanned = False


@dataclass
class FontChoice:
    """The ``font.family`` list for the text, the fonts beyond the base that are used (family,
    file), and the characters that no installed font has."""

    families: list[str]
    used: list[tuple[str, str]] = field(default_factory=list)
    missing: str = ""
    rescanned: bool = False

    def describe(self) -> str:
        """``DejaVu Sans, Noto Sans CJK JP (NotoSansCJK-Regular.ttc)``: for the one line the
        CLI prints."""
        extra = [f"{name} ({os.path.basename(path)})" for name, path in self.used]
        return ", ".join([BASE_FAMILY] + extra)

    def to_json(self) -> dict[str, object]:
        return {
            "families": [BASE_FAMILY] + [n for n, _ in self.used],
            "files": [p for _, p in self.used],
            "missing_characters": self.missing,
        }


def needed_characters(texts: Iterable[str]) -> set[int]:
    return {ord(ch) for text in texts for ch in text if ch.isprintable() and not ch.isspace()}


def choose_fonts(texts: Iterable[str]) -> FontChoice:
    """The fonts that draw every character of *texts* (see the module docstring)."""
    global _rescanned
    needed = needed_characters(texts)
    used, missing = _cover(needed, search_all=False)
    rescanned = False
    if missing and not _rescanned:  # the cache may predate a font installed since
        _rescanned = rescanned = True
        _register_system_fonts()
    if missing:
        used, missing = _cover(needed, search_all=True)
    return FontChoice(
        families=[BASE_FAMILY] + [name for name, _ in used],
        used=used,
        missing="".join(sorted(chr(c) for c in missing)),
        rescanned=rescanned,
    )


def _cover(needed: set[int], *, search_all: bool) -> tuple[list[tuple[str, str]], set[int]]:
    from matplotlib import font_manager

    base = _family_file(BASE_FAMILY)
    left = needed - (_charmap(base) if base else frozenset())
    used: list[tuple[str, str]] = []
    tried = {base}
    candidates = [(name, _family_file(name)) for name in FALLBACK_FAMILIES]
    if search_all:  # any font matplotlib now knows, regular faces first
        entries = sorted(
            font_manager.fontManager.ttflist, key=lambda e: (e.style != "normal", abs(_weight(e.weight) - 400), e.name)
        )
        candidates += [(e.name, e.fname) for e in entries]
    for name, path in candidates:
        if not left:
            break
        if path is None or path in tried or name in {n for n, _ in used}:
            continue
        tried.add(path)
        covered = left & _charmap(path)
        if covered:
            used.append((name, path))
            left -= covered
    return used, left


def _family_file(family: str) -> Optional[str]:
    """The file matplotlib would use for *family* (regular face), or None if it has none."""
    from matplotlib import font_manager

    if not any(e.name == family for e in font_manager.fontManager.ttflist):
        return None
    try:
        found = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        return str(found)  # matplotlib >= 3.10 gives a str subclass carrying a face index
    except ValueError:
        return None


def _charmap(path: str) -> frozenset[int]:
    if path not in _charmaps:
        from matplotlib import ft2font

        try:
            _charmaps[path] = frozenset(ft2font.FT2Font(path).get_charmap())
        except (OSError, RuntimeError, ValueError):  # unreadable or unsupported font file
            _charmaps[path] = frozenset()
    return _charmaps[path]


def _register_system_fonts() -> int:
    """Add the font files on the system that matplotlib's cache does not know. Returns how many."""
    from matplotlib import font_manager

    known = {e.fname for e in font_manager.fontManager.ttflist}
    added = 0
    for path in font_manager.findSystemFonts():
        if path in known:
            continue
        try:
            font_manager.fontManager.addfont(path)
            added += 1
        except (OSError, RuntimeError, ValueError):  # a broken font file: skip it
            continue
    return added


def _weight(value: object) -> int:
    if isinstance(value, int):
        return value
    names = {"normal": 400, "regular": 400, "book": 400, "medium": 500, "bold": 700, "light": 300}
    return names.get(str(value).lower(), 400)
