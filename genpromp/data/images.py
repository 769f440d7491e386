"""Validated image reading.

``read_rgb`` fully decodes a file and returns ``uint8 [H, W, 3]`` RGB; every PIL mode that
datasets contain in practice is converted (grayscale ``L``/``LA``/``1``, palette ``P``/``PA``,
``CMYK``, ``YCbCr``, ``RGBA`` (alpha dropped), 16-bit and 32-bit integer / float grayscale,
which are rescaled to 8 bit rather than clipped). A missing, unreadable, corrupt or truncated
file raises :class:`genpromp.errors.InputError` naming the file. PIL's truncated-image leniency
(``ImageFile.LOAD_TRUNCATED_IMAGES``, which would fill the missing part with gray) is switched off
for the duration of the decode.

``image_size`` reads only the header (cheap) but still checks that the file is an image with a
positive size; it does not detect truncation — use ``check_decodes`` (or ``read_rgb``) for that.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import InputError

__all__ = ["read_rgb", "image_size", "check_decodes", "to_rgb_array"]

_TRUNCATION_LOCK = threading.Lock()
_TRUNCATION_USERS = 0
_TRUNCATION_SAVED = False


@contextlib.contextmanager
def _strict_truncation():
    """Temporarily set ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (thread-safe, re-entrant)."""
    global _TRUNCATION_USERS, _TRUNCATION_SAVED
    with _TRUNCATION_LOCK:
        if _TRUNCATION_USERS == 0:
            _TRUNCATION_SAVED = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _TRUNCATION_USERS += 1
    try:
        yield
    finally:
        with _TRUNCATION_LOCK:
            _TRUNCATION_USERS -= 1
            if _TRUNCATION_USERS == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _TRUNCATION_SAVED


def to_rgb_array(img):
    """Convert a decoded PIL image of any common mode to ``uint8 [H, W, 3]``."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 255:
            arr8 = arr.astype(np.uint8)
        elif mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)  # 16-bit data stored as "I"
        else:
            a = arr.astype(np.float64)
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
            if mode == "F" and lo >= 0.0 and hi <= 1.0:
                lo, hi = 0.0, 1.0
            arr8 = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr8[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_rgb(path):
    """Decode ``path`` completely and return ``uint8 [H, W, 3]`` RGB.

    Raises InputError for a missing, unreadable, corrupt or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        with _strict_truncation(), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                arr = to_rgb_array(img)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InputError(path, f"cannot decode image ({exc}); the file is corrupt or truncated — "
                               "re-download or remove it from the index") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(path, f"decoded to an unusable array of shape {arr.shape}")
    return arr


def image_size(path):
    """``(width, height)`` from the image header (no full decode); validated to be positive."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
            fmt = img.format
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None
    if not fmt or width <= 0 or height <= 0:
        raise InputError(path, f"image header gives an invalid size {width}x{height}")
    return int(width), int(height)


def check_decodes(path):
    """Fully decode ``path`` (catches truncation); return ``(width, height)``."""
    arr = read_rgb(path)
    return int(arr.shape[1]), int(arr.shape[0])
