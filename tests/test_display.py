"""clip_rt.display: names and text made safe for a terminal, and their width in columns."""

from __future__ import annotations

import os
from pathlib import Path

from clip_rt.display import display_path, display_width, loader_label, pad, printable


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("a\x1b[2Jb\r\n\t\x7f\u202eend") == "a\\x1b[2Jb\\r\\n\\t\\x7f\\u202eend"
    assert printable("ünïcödé 猫 \U0001f600") == "ünïcödé 猫 \U0001f600"  # printable text is kept


def test_display_path_takes_str_bytes_and_path_like() -> None:
    undecodable = os.fsdecode(b"caf\xe9\x1b.png")  # a non-UTF-8 name, as os.listdir gives it
    assert display_path(undecodable) == "caf\\xe9\\x1b.png"
    assert display_path(b"caf\xe9\x1b.png") == "caf\\xe9\\x1b.png"
    assert display_path(Path("dir") / "a\nb.jpg") == os.path.join("dir", "a\\nb.jpg")


def test_loader_label_keeps_control_characters_for_records() -> None:
    assert loader_label(b"caf\xe9\x1b.png") == "caf\\xe9\x1b.png"
    assert display_path(b"caf\xe9\x1b.png") == printable(loader_label(b"caf\xe9\x1b.png"))


def test_display_width_counts_wide_and_zero_width_characters() -> None:
    assert display_width("abc") == 3
    assert display_width("赤い猫") == 6
    assert display_width("e\u0301") == 1  # combining accent
    assert display_width("a\u200bb") == 2  # zero-width space (format character)
    assert pad("猫", 4) == "猫  " and pad("猫", 4, ">") == "  猫" and pad("toolong", 3) == "toolong"
