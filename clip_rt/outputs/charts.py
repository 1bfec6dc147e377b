"""Charts for `classify --report` and `similarity --plot` (matplotlib: the [report] extra).

matplotlib is imported inside the functions, and used through ``Figure`` objects, not
pyplot: no backend switch, no global state left behind (an API user's notebook keeps its
settings). User text (labels, file names) is drawn literally: mathtext is off
(``text.parse_math``), so ``$x$`` in a file name is three characters, not a formula, and
control characters are shown escaped. Fonts are chosen per text by ``fonts.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Union

from ..display import display_path, printable
from ..errors import ClipRtError, ImageLoadError, InputError
from .fonts import INSTALL_HINT, FontChoice, choose_fonts

if TYPE_CHECKING:  # matplotlib (the [report] extra) and Pillow are imported when a chart is drawn
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure
    from PIL import Image

    from ..inputs.images import ImageSource

BAR_COLOUR = "#3b75af"
MEAN_COLOUR = "#d62728"
DPI = 110
MIN_BAR = 0.006  # of the axis span: a tiny non-zero value still shows as a bar


def require_matplotlib() -> ModuleType:
    """The ``matplotlib`` module, or a clear error naming the extra."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ClipRtError("charts need matplotlib, which is not installed: pip install 'clip-rt[report]'") from None
    return matplotlib


@contextmanager
def chart_style(texts: Iterable[str]) -> Iterator[FontChoice]:
    """Settings for drawing charts that show *texts*: fonts that have their characters,
    mathtext off. Characters no font has were reported by the caller (once); matplotlib's
    per-glyph warnings for them are silenced."""
    mpl = require_matplotlib()
    choice = choose_fonts(list(texts))
    rc = {"font.family": choice.families, "text.parse_math": False, "text.usetex": False}
    with mpl.rc_context(rc), warnings.catch_warnings():
        if choice.missing:
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")
        yield choice


def label_text(text: str, width: int = 40) -> str:
    """User text as shown in a chart: control characters escaped, shortened to *width*."""
    return shorten(printable(text), width)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def shorten_left(text: str, width: int) -> str:
    """For paths: the end (the file name) is what tells them apart."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def percent(value: float) -> str:
    """``12.3%``; small values keep two significant digits (``0.042%``) instead of ``0.0%``."""
    if value == 0 or value >= 0.01:
        return f"{100 * value:.1f}%"
    return f"{100 * value:.2g}%"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Union[str, Path]) -> Path:
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def _integer_ticks(axis: Axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 images


def _percent_ticks(axis: Axis) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


def bar_chart(
    path: Union[str, Path],
    names: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str,
    percent_axis: bool = False,
    counts: bool = False,
    texts: Optional[Sequence[Optional[str]]] = None,
) -> Path:
    """Horizontal bars, first name on top, each value written at the end of its bar (or
    ``texts[i]`` when given and not None). Percentages: the axis runs from 0 to a little past
    the largest value and never past 100 %. Counts: integer ticks."""
    fig = _figure(7.5, max(2.2, 0.42 * len(names) + 1.2))
    ax = fig.subplots()
    ys = list(range(len(names)))[::-1]
    top = max(values, default=0.0)
    upper = (min(1.0, top * 1.15) if percent_axis else top * 1.15) or 1.0
    drawn = [max(v, upper * MIN_BAR) if v > 0 else 0.0 for v in values]
    ax.barh(ys, drawn, color=BAR_COLOUR)
    ax.set_yticks(ys)
    ax.set_yticklabels([label_text(n) for n in names])
    ax.set_xlim(0, upper)
    for i, (y, v) in enumerate(zip(ys, values)):
        text = percent(v) if percent_axis else f"{v:g}"
        if texts is not None and texts[i] is not None:
            text = texts[i]  # type: ignore[assignment]
        ax.text(drawn[i] + upper * 0.01, y, text, va="center", fontsize=9, clip_on=False)
    if percent_axis:
        _percent_ticks(ax.xaxis)
    if counts:
        _integer_ticks(ax.xaxis)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def pie_chart(path: Union[str, Path], names: Sequence[str], counts: Sequence[int], *, title: str) -> Path:
    """A pie of the non-zero counts, named in a legend beside it (labels around the pie
    collided with the title); percentages inside the wedges of 5 % or more."""
    keep = [(n, c) for n, c in zip(names, counts) if c > 0]
    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    if keep:
        total = sum(c for _, c in keep)
        wedges, *_ = ax.pie(
            [c for _, c in keep],
            startangle=90,
            counterclock=False,
            pctdistance=0.7,
            autopct=lambda pct: f"{pct:.0f}%" if pct >= 5 else "",
            wedgeprops={"edgecolor": "white"},
            textprops={"color": "white", "fontsize": 10},
        )
        ax.legend(
            wedges,
            [f"{label_text(n)}: {c} ({c / total:.0%})" for n, c in keep],
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )
        ax.set_aspect("equal")
    else:
        ax.text(0.5, 0.5, "no images", ha="center", va="center")
        ax.axis("off")
    ax.set_title(title, pad=14)
    return _save(fig, path)


def _hist(ax: Axes, values: Sequence[float], *, xlabel: str, unit: str = "", fmt: str = "{:.3f}") -> None:
    if len(values):
        import numpy as np

        bins = min(30, max(5, len(values) // 2))
        ax.hist(values, bins=bins, color=BAR_COLOUR, edgecolor="white")
        mean = float(np.mean(values))
        ax.axvline(mean, color=MEAN_COLOUR, linestyle="--", linewidth=2, label=f"mean {fmt.format(mean)}{unit}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    _integer_ticks(ax.yaxis)
    ax.spines[["top", "right"]].set_visible(False)


def histogram(path: Union[str, Path], values: Sequence[float], *, title: str, xlabel: str) -> Path:
    """Histogram with the mean marked by a dashed line and written in the legend."""
    fig = _figure(7.5, 4)
    ax = fig.subplots()
    _hist(ax, values, xlabel=xlabel)
    ax.set_title(title)
    return _save(fig, path)


def size_histograms(path: Union[str, Path], widths: Sequence[int], heights: Sequence[int], *, title: str) -> Path:
    """Width and height in pixels, side by side, each with its mean as a dashed line."""
    fig = _figure(11, 4)
    ax_w, ax_h = fig.subplots(1, 2)
    _hist(ax_w, widths, xlabel="width (pixels)", unit=" px", fmt="{:.0f}")
    _hist(ax_h, heights, xlabel="height (pixels)", unit=" px", fmt="{:.0f}")
    ax_w.set_title("Width")
    ax_h.set_title("Height")
    fig.suptitle(title)
    return _save(fig, path)


def thumbnail(source: ImageSource, size: int) -> Optional[Image.Image]:
    """An RGB thumbnail of *source* through clip-rt's own loader (its pixel limit, no FIFO or
    device, EXIF orientation, draft decoding), or None when it cannot be read now."""
    from ..inputs.images import open_image

    try:
        loaded = open_image(source, draft=lambda w, h: (size, size))
        img = loaded.image
        img.thumbnail((size, size))
        return img.convert("RGB")
    except (ImageLoadError, InputError):
        return None


def contact_sheet(
    path: Union[str, Path], items: Sequence[tuple[str, str]], *, columns: int = 6, thumb: int = 160
) -> Path:
    """A grid of (image path, caption) thumbnails; an image that cannot be read (any more)
    shows as a grey tile marked "unreadable"."""
    n = max(1, len(items))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = _figure(cols * thumb / 72, rows * (thumb / 72 + 0.45))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img_path, caption) in zip(axes.flat, items):
        img = thumbnail(img_path, thumb * 2)
        if img is None:
            ax.imshow([[(0.8, 0.8, 0.8)]])
            caption = f"{caption} (unreadable)"
        else:
            ax.imshow(img)
        name = display_path(os.path.basename(img_path))
        ax.set_title(f"{shorten(caption, 28)}\n{shorten(name, 24)}", fontsize=9)
    return _save(fig, path)


def image_with_bars(
    path: Union[str, Path], image: Image.Image, names: Sequence[str], probs: Sequence[float], *, title: str = ""
) -> Path:
    """The image on the left, its text probabilities as labelled bars on the right; the
    percentage axis runs from 0 to 100 %."""
    fig = _figure(11, max(3.5, 0.45 * len(names) + 1.5))
    ax_img, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    ax_img.imshow(image)
    ax_img.axis("off")
    if title:
        ax_img.set_title(shorten_left(printable(title), 48), fontsize=10)
    ys = list(range(len(names)))[::-1]
    ax_bar.barh(ys, probs, color=BAR_COLOUR)
    ax_bar.set_yticks(ys)
    ax_bar.set_yticklabels([label_text(n) for n in names])
    ax_bar.set_xlim(0, 1)
    for y, p in zip(ys, probs):
        ax_bar.text(p + 0.01, y, percent(p), va="center", fontsize=9, clip_on=False)
    _percent_ticks(ax_bar.xaxis)
    ax_bar.set_xlabel("probability")
    ax_bar.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_similarity(
    image: ImageSource,
    texts: Sequence[str],
    probabilities: Sequence[float],
    path: Union[str, Path],
    *,
    title: Optional[str] = None,
) -> Path:
    """Write a PNG to *path*: *image* beside a bar chart of the *probabilities* of *texts*
    (e.g. from :meth:`ClipModel.similarity`). *image* is a path or anything
    :func:`clip_rt.inputs.images.open_image` takes; the title defaults to its file name.
    User text is drawn literally, in fonts that have its characters (``warnings.warn`` names
    the characters no installed font has). The file is written whole or not at all
    (:class:`~clip_rt.errors.OutputError` otherwise). Needs the [report] extra."""
    from .files import StagedFiles, check_target

    texts = [str(t) for t in texts]
    probs = [float(p) for p in probabilities]
    if len(texts) != len(probs):
        raise InputError(f"{len(texts)} texts but {len(probs)} probabilities: expected one per text")
    require_matplotlib()
    target = os.fspath(path)
    from .files import refuse_inputs_as_outputs

    refuse_inputs_as_outputs([(target, "plot")], [os.fspath(image)] if isinstance(image, (str, os.PathLike)) else [])
    check_target(target, "plot")
    from ..inputs.images import open_image

    loaded = open_image(image)  # raises ImageLoadError with the file's name
    shown = loaded.image.convert("RGB")
    if title is None:
        title = loaded.source if isinstance(image, (str, os.PathLike)) else ""
    warn_missing_glyphs(texts + [title], "the texts")
    with chart_style(texts + [title]), StagedFiles(os.path.dirname(target) or ".", "plot") as staged:
        image_with_bars(staged.path(os.path.basename(target)), shown, texts, probs, title=title)
        staged.commit()
    return Path(target)


def warn_missing_glyphs(texts: Iterable[str], what: str) -> FontChoice:
    """One warning naming the characters of *texts* that no installed font has."""
    choice = choose_fonts(list(texts))
    if choice.missing:
        shown = ", ".join(repr(c) for c in choice.missing[:8]) + (" ..." if len(choice.missing) > 8 else "")
        warnings.warn(
            f"no installed font has {len(choice.missing)} character(s) of {what} ({shown}): they show "
            f"as boxes in the charts; install a font that has them ({INSTALL_HINT})",
            stacklevel=3,
        )
    return choice
