"""Charts for `classify --report` and `similarity --plot` (matplotlib: the [report] extra).

matplotlib is imported inside the functions, with the Agg backend (no display needed). Labels
may be in any script: the font list puts a CJK-capable family after DejaVu Sans, and
matplotlib (>= 3.6) falls back glyph by glyph through that list.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ClipRtError

# Tried in order, per glyph. Debian: fonts-noto-cjk or fonts-wqy-zenhei provide the CJK ones.
FONT_FALLBACK = (
    "DejaVu Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Noto Sans",
    "Arial Unicode MS",
)
BAR_COLOUR = "#3b75af"


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` set up for files, or a clear error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ClipRtError(
            "charts need matplotlib, which is not installed: pip install 'clip-rt[report]'"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    available = {f.name for f in font_manager.fontManager.ttflist}
    families = [f for f in FONT_FALLBACK if f in available] or ["sans-serif"]
    plt.rcParams["font.family"] = families
    return plt


def missing_glyph_fonts() -> bool:
    """True when no CJK-capable font was found (labels in those scripts would show as boxes)."""
    from matplotlib import font_manager

    available = {f.name for f in font_manager.fontManager.ttflist}
    return not any(f in available for f in FONT_FALLBACK[1:6])


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def bar_chart(path: Path, names: Sequence[str], values: Sequence[float], *, title: str, xlabel: str,
              percent: bool = False, value_fmt: str = "{:g}", xlim: Optional[float] = None,
              texts: Optional[Sequence[Optional[str]]] = None) -> Path:
    """Horizontal bars, first name on top, the value written at the end of each bar (or
    ``texts[i]`` when given and not None)."""
    plt = require_matplotlib()
    height = max(2.2, 0.42 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height))
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, values, color=BAR_COLOUR)
    ax.set_yticks(ys)
    ax.set_yticklabels(list(names))
    top = xlim if xlim is not None else (max(values) if len(values) else 1.0) or 1.0
    ax.set_xlim(0, top * 1.18)
    for i, (y, v) in enumerate(zip(ys, values)):
        text = f"{100 * v:.1f}%" if percent else value_fmt.format(v)
        if texts is not None and texts[i] is not None:
            text = texts[i]
        ax.text(v + top * 0.01, y, text, va="center", fontsize=9)
    if percent:
        from matplotlib.ticker import PercentFormatter

        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def pie_chart(path: Path, names: Sequence[str], counts: Sequence[int], *, title: str) -> Path:
    plt = require_matplotlib()
    keep = [(n, c) for n, c in zip(names, counts) if c > 0]
    fig, ax = plt.subplots(figsize=(6, 5))
    if keep:
        total = sum(c for _, c in keep)
        ax.pie([c for _, c in keep], labels=[f"{n} ({c})" for n, c in keep], startangle=90, counterclock=False,
               autopct=lambda pct: f"{pct:.0f}%" if pct * total / 100 >= 1 else "",
               wedgeprops={"edgecolor": "white"})
        ax.axis("equal")
    else:
        ax.text(0.5, 0.5, "no images", ha="center", va="center")
        ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


def histogram(path: Path, values: Sequence[float], *, title: str, xlabel: str) -> Path:
    """Histogram with the mean marked by a dashed line and written in the legend."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if len(values):
        import numpy as np

        bins = min(30, max(5, len(values) // 2))
        ax.hist(values, bins=bins, color=BAR_COLOUR, edgecolor="white")
        mean = float(np.mean(values))
        ax.axvline(mean, color="#d62728", linestyle="--", linewidth=2, label=f"mean {mean:.3f}")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 images
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def contact_sheet(path: Path, items: Sequence[tuple[str, str]], *, columns: int = 6, thumb: int = 160) -> Path:
    """A grid of (image path, caption) thumbnails; unreadable images show as a grey tile."""
    plt = require_matplotlib()
    from PIL import Image

    n = max(1, len(items))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * thumb / 72, rows * (thumb / 72 + 0.45)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img_path, caption) in zip(axes.flat, items):
        try:
            with Image.open(img_path) as im:
                im.thumbnail((thumb * 2, thumb * 2))
                ax.imshow(im.convert("RGB"))
        except (OSError, ValueError):
            ax.imshow([[(0.8, 0.8, 0.8)]])
        name = os.fsencode(os.path.basename(img_path)).decode("utf-8", "backslashreplace")
        ax.set_title(f"{caption}\n{_shorten(name, 24)}", fontsize=9)
    return _save(fig, path)


def image_with_bars(path: Path, image: Any, names: Sequence[str], probs: Sequence[float], *, title: str = "") -> Path:
    """The image on the left, its text probabilities as labelled percentage bars on the right."""
    plt = require_matplotlib()
    height = max(3.5, 0.45 * len(names) + 1.5)
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(11, height), gridspec_kw={"width_ratios": [1, 1.3]})
    ax_img.imshow(image)
    ax_img.axis("off")
    if title:
        ax_img.set_title(_shorten(title, 40), fontsize=10)
    ys = list(range(len(names)))[::-1]
    ax_bar.barh(ys, probs, color=BAR_COLOUR)
    ax_bar.set_yticks(ys)
    ax_bar.set_yticklabels([_shorten(n, 40) for n in names])
    ax_bar.set_xlim(0, 1.15)
    for y, p in zip(ys, probs):
        ax_bar.text(p + 0.01, y, f"{100 * p:.1f}%", va="center", fontsize=9)
    from matplotlib.ticker import PercentFormatter

    ax_bar.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax_bar.set_xlabel("probability")
    ax_bar.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
