"""What the API's image methods take: one image or a collection of them, and their batch size."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InputError


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def is_single_source(images: Any) -> bool:
    """One image (path, bytes, file object, PIL image, array) rather than a collection of them."""
    if isinstance(images, (list, tuple)):
        return False
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, np.ndarray)):
        return True
    return hasattr(images, "read") or hasattr(images, "getexif") or not hasattr(images, "__iter__")


def as_image_list(images: Any) -> list[Any]:
    return [images] if is_single_source(images) else list(images)
