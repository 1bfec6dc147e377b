"""Video frame sampling (PyAV: the [video] extra) and labelled segments for `clip-rt video`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..display import display_path
from ..errors import ClipRtError, InputError

if TYPE_CHECKING:  # the [video] extra and Pillow, imported when a video is read
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream
    from PIL import Image


def require_av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise ClipRtError("video needs PyAV, which is not installed: pip install 'clip-rt[video]'") from None
    return av


@dataclass
class Frame:
    time: float  # seconds from the start of the stream
    image: Image.Image  # RGB


@dataclass
class Segment:
    start: float  # time of its first sampled frame
    end: float  # time of the first frame after it (or the video's end)
    label: str
    mean_score: float
    frames: int


# Frames of at least this many pixels (4K UHD is 8.3 M) are decoded with slice threads only:
# frame threading keeps one whole frame per thread in flight.
BIG_FRAME_PIXELS = 16_000_000
Shrink = Callable[[int, int], "tuple[int, int]"]


def sample_frames(
    path: str, every: float, *, max_pixels: Optional[int] = None, shrink: Optional[Shrink] = None
) -> Iterator[Frame]:
    """Decoded frames about *every* seconds apart: the first frame at or after 0, every, 2*every...

    Frames are decoded in order (no seeking): exact on any codec, at the cost of decoding
    the frames that are skipped.

    *max_pixels*: the same limit as for images (``PIL.Image.MAX_IMAGE_PIXELS``): a video whose
    frames are larger is refused before any frame is decoded (InputError). *shrink*: given a
    frame's (width, height), the smallest (width, height) it may be converted at; the frame is
    then scaled down while it is converted to RGB (one swscale pass, area filter), never up.
    """
    if every <= 0:
        raise InputError(f"--every must be a positive number of seconds, got {every}")
    av = require_av()
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open video {display_path(path)!r}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{display_path(path)!r} has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        _check_pixels(path, width, height, max_pixels)  # before decoding anything
        stream.thread_type = "SLICE" if width * height >= BIG_FRAME_PIXELS else "AUTO"
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                t = _frame_time(frame, stream)
                if t + 1e-6 < next_time:
                    continue
                _check_pixels(path, frame.width, frame.height, max_pixels)  # the size may change mid-stream
                yield Frame(time=t, image=to_image(frame, shrink))
                # Next sample on the grid after t, so a late frame does not shift every later one.
                next_time = (int(t / every + 1e-6) + 1) * every
        except av.FFmpegError as exc:
            raise InputError(f"cannot decode video {display_path(path)!r}: {exc}") from exc


def _check_pixels(path: str, width: int, height: int, max_pixels: Optional[int]) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"video {display_path(path)!r}: frames of {width}x{height} = {width * height} pixels are "
            f"over the limit of {max_pixels} that images have too (PIL.Image.MAX_IMAGE_PIXELS; "
            "raise it only for files you trust)"
        )


def to_image(frame: VideoFrame, shrink: Optional[Shrink] = None) -> Image.Image:
    """The frame as an RGB PIL image: the same pixels as PyAV's ``frame.to_image()`` with one
    copy fewer (on a 9000x9000 frame: 714 MB peak instead of 1167 MB). With *shrink*, scaled
    down while converted (swscale, area filter) when the frame is larger than it allows."""
    from PIL import Image

    options: dict[str, Any] = {}
    if shrink is not None:
        want_w, want_h = shrink(frame.width, frame.height)
        scale = max(want_w / frame.width, want_h / frame.height)
        if scale < 1.0:
            options = {
                "width": max(1, math.ceil(frame.width * scale)),
                "height": max(1, math.ceil(frame.height * scale)),
                "interpolation": "AREA",
            }
    rgb = frame.reformat(format="rgb24", **options)
    plane = rgb.planes[0]
    # Pillow copies an RGB buffer into its own 4-byte pixels, reading rows line_size apart.
    # (a VideoPlane is a buffer: the stubs do not say so)
    return Image.frombuffer("RGB", (rgb.width, rgb.height), plane, "raw", "RGB", plane.line_size, 1)  # type: ignore[arg-type]


def _frame_time(frame: VideoFrame, stream: VideoStream) -> float:
    if frame.time is not None:
        return float(frame.time)
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base)
    raise InputError("video frame has no timestamp")


def video_duration(path: str) -> float | None:
    """The video's length in seconds, or None where the container does not say."""
    av = require_av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{display_path(path)!r} has no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return float(container.duration / 1_000_000)  # microseconds (AV_TIME_BASE)
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open video {display_path(path)!r}: {exc}") from exc
    return None


def segments(times: Sequence[float], labels: Sequence[str], scores: Sequence[float], end_time: float) -> list[Segment]:
    """Runs of consecutive frames with the same top label. A segment ends where the next one
    starts; the last ends at *end_time* (the video's duration when known)."""
    out: list[Segment] = []
    i = 0
    while i < len(labels):
        j = i
        while j + 1 < len(labels) and labels[j + 1] == labels[i]:
            j += 1
        end = times[j + 1] if j + 1 < len(times) else max(end_time, times[j])
        out.append(
            Segment(
                start=float(times[i]),
                end=float(end),
                label=labels[i],
                mean_score=float(np.mean(scores[i : j + 1])),
                frames=j - i + 1,
            )
        )
        i = j + 1
    return out


def overall(probabilities: np.ndarray, names: Sequence[str]) -> tuple[str, float, dict[str, float]]:
    """The video's label: argmax of the mean of the frames' probability vectors."""
    mean = probabilities.mean(axis=0)
    best = int(np.argmax(mean))
    return names[best], float(mean[best]), {n: float(p) for n, p in zip(names, mean)}


def is_video(path: str) -> bool:
    from .discover import VIDEO_EXTENSIONS

    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS
