"""Decoding ImageNet's JPEGs into square uint8 arrays with Pillow.

This module owns the pixels of the ImageNet-1K pools: a record's image bytes become
``u8[S, S, 3]`` (the shorter side resized to S, bicubic, then the centre crop), and how
many threads decode them. Pillow is imported only when an image is decoded. A shell
module (CPU-bound, no jit): ``imagenet_tfds.PreparedImageNet.images`` calls it from a
thread pool.
"""

from __future__ import annotations

import io
import os

import numpy as np


def decode_image(data: bytes, size: int) -> np.ndarray:
    """JPEG (or any Pillow image) bytes -> u8[size, size, 3]: the shorter side resized to
    ``size`` (bicubic), then the centre ``size x size`` crop.

    Pillow's JPEG draft mode first decodes at the smallest power-of-two reduction whose
    sides stay at least ``size``, which is faster and filters no worse.
    """
    from PIL import Image  # noqa: PLC0415 (only the readers need Pillow)

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def default_threads() -> int:
    """The cores this process may run on (one decoding thread each)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
