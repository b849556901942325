"""Dataset records, the data error type and image decoding."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.images import MAX_PIXELS, DataError, ImageSource, decode_image, image_size

__all__ = ["MAX_PIXELS", "DataError", "ImageRecord", "ImageSource", "image_size", "load_image"]


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    `name`: unique id within the dataset (file stem, e.g. `FudanPed00001`).
    `image`: path of the image file, or its encoded bytes (uploads held in memory).
    `boxes`: FloatTensor[N, 4], pedestrians as x1, y1, x2, y2 in pixels of the image after
    EXIF orientation, 0-based continuous coordinates (`0 <= x1 < x2 <= W`, same for y).
    """

    name: str
    image: ImageSource
    boxes: torch.Tensor


def load_image(source: ImageSource, *, name: str = "", max_pixels: int = MAX_PIXELS
               ) -> torch.Tensor:
    """Decode an image file into FloatTensor[3, H, W], RGB, values in [0, 1] (`core.images.decode_image`:
    EXIF orientation applied, any mode to RGB, DataError naming the file for anything unreadable)."""
    return torch.from_numpy(decode_image(source, name=name, max_pixels=max_pixels))
