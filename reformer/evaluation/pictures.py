"""Pictures of sampled images: token rows (sub-pixel values in raster order, the channels of
a pixel together) back to `[H, W, C]` arrays, laid out in one grid, written as PNG."""

from __future__ import annotations

import io

import numpy as np

from reformer import storage


def to_image(tokens_L, shape: tuple[int, int, int]) -> np.ndarray:
    """One sequence of sub-pixel values as a `shape` (height, width, channels) uint8 image."""
    return np.clip(np.asarray(tokens_L), 0, 255).astype(np.uint8).reshape(shape)


def grid(rows: list[list[np.ndarray]], scale: int = 4, gap: int = 2) -> np.ndarray:
    """Images in rows (each row left to right, rows top to bottom), each enlarged `scale`
    times (nearest neighbour), `gap` white pixels between them; an RGB uint8 array."""
    height, width = (max(im.shape[k] for row in rows for im in row) * scale for k in (0, 1))
    n_cols = max(len(row) for row in rows)
    out = np.full(
        (len(rows) * (height + gap) + gap, n_cols * (width + gap) + gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            big = np.kron(image, np.ones((scale, scale, 1), np.uint8))
            if big.shape[-1] == 1:
                big = np.repeat(big, 3, axis=-1)
            top, left = gap + r * (height + gap), gap + c * (width + gap)
            out[top : top + big.shape[0], left : left + big.shape[1]] = big
    return out


def write_png(path: str, image: np.ndarray) -> None:
    """`image` (uint8 `[H, W, 3]`) as a PNG file, local or on Cloud Storage, whole or not at
    all."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())
