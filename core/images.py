"""Image decoding with Pillow and numpy only (no torch): the API decodes `/detect` uploads
here, and `core.data.load_image` wraps the same decoder for training."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = Path | bytes
"""An image on disk or the encoded bytes of an image file (PNG, JPEG, ...)."""

MAX_PIXELS = 40_000_000
_ORIENT_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


class DataError(ValueError):
    """Bad user data; the message names the file / key / field and what is wrong."""


def _label(source: ImageSource, name: str) -> str:
    return name or (str(source) if isinstance(source, Path) else "<image bytes>")


def _open(source: ImageSource, label: str, max_pixels: int) -> Image.Image:
    """Open the header only and refuse images over `max_pixels` before decoding."""
    if isinstance(source, Path) and not source.is_file():
        raise DataError(f"{label}: image file not found")
    try:
        img = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError as e:
        raise DataError(f"{label}: image too large ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: not a readable image ({e})") from e
    if img.width * img.height > max_pixels:
        img.close()
        raise DataError(f"{label}: image of {img.width}x{img.height} pixels exceeds the limit "
                        f"of {max_pixels} pixels")
    return img


def image_size(source: ImageSource, *, name: str = "", max_pixels: int = MAX_PIXELS
               ) -> tuple[int, int]:
    """`(W, H)` after EXIF orientation, from the file header only (cheap, no decoding).

    Raises DataError for missing, unidentifiable or too large images.
    """
    label = _label(source, name)
    with _open(source, label, max_pixels) as img:
        try:
            orientation = img.getexif().get(0x0112)
        except (OSError, SyntaxError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{label}: malformed EXIF data ({e})") from e
        w, h = img.size
    return (h, w) if orientation in _ORIENT_SWAPS_AXES else (w, h)


def decode_image(source: ImageSource, *, name: str = "", max_pixels: int = MAX_PIXELS
                 ) -> np.ndarray:
    """Decode an image file into float32 [3, H, W], RGB, values in [0, 1].

    EXIF orientation is applied (`PIL.ImageOps.exif_transpose`); grayscale, 16-bit, RGBA,
    CMYK and palette images become RGB (alpha is dropped). `name` labels error messages.
    Raises DataError for a missing, undecodable or truncated file and for images of more than
    `max_pixels` pixels (checked on the header, before decoding).
    """
    label = _label(source, name)
    with _open(source, label, max_pixels) as img:
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombError as e:
            raise DataError(f"{label}: image too large ({e})") from e
        except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError) as e:
            raise DataError(f"{label}: corrupt or truncated image ({e})") from e
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale
            arr = np.asarray(img, dtype=np.float32)
            peak = 65535.0 if img.mode.startswith("I") else max(float(arr.max()), 1.0)
            gray = np.clip(arr / peak, 0.0, 1.0).astype(np.float32)
            return np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape)))
        rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
