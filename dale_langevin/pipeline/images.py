"""Image grids as PNG bytes (Pillow), for people who would rather look than read; files via :mod:`.workdir`."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2, scale: int = 2) -> np.ndarray:
    """Tiles ``images`` ``(N, H, W, C)`` in [0, 1] into one uint8 array ``(rows*(H+pad)+pad, ..., C)``.

    Cells are separated by ``pad`` pixels of mid grey and enlarged ``scale`` times (nearest).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 1 or 3), got {images.shape}")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 0.5, np.float32)
    # NaN pixels (a diverged sampler) show as black rather than as undefined uint8 values.
    for i, img in enumerate(np.clip(np.nan_to_num(images, nan=0.0), 0.0, 1.0)):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = img
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return (grid * 255.0 + 0.5).astype(np.uint8)


def png_bytes(images: np.ndarray, ncols: int | None = None) -> bytes:
    """The PNG file of :func:`make_grid` of ``images`` ``(N, H, W, C)`` in [0, 1]."""
    grid = make_grid(images, ncols)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="png")
    return buffer.getvalue()
