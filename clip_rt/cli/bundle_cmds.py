"""`clip-rt export`, `clip-rt info`, `clip-rt models` (being written)."""
from __future__ import annotations

from . import main  # noqa: F401
