"""Image grids, density pictures of 2-D samples, and PNG files (through Pillow).

    write_png("samples.png", image_grid(images))          # images float in [0, 1], (N, H, W, C)
    write_png("toy.png", density_image(points))            # 2-D samples as a density picture
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["image_grid", "density_image", "write_png", "read_png"]


def image_grid(images: np.ndarray, ncols: Optional[int] = None, pad: int = 1, scale: Optional[int] = None,
               background: float = 1.0) -> np.ndarray:
    """Tile images (N, H, W, C) with values in [0, 1] into one (rows, cols) grid, float32 (H', W', C).

    ``ncols`` defaults to ceil(sqrt(N)); ``pad`` pixels of ``background`` separate the tiles; each
    pixel is repeated ``scale`` times in both directions (default: enough for a grid about 512
    pixels wide, so 8x8 digits stay visible).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"image_grid takes a non-empty array (N, H, W, C) with C = 1 or 3; got shape {images.shape}")
    n, h, w, c = images.shape
    ncols = int(ncols or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    if scale is None:
        scale = max(1, 512 // (ncols * (w + pad) + pad))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), background, np.float32)
    for i, image in enumerate(np.clip(images, 0.0, 1.0)):
        r, q = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def density_image(points: np.ndarray, bins: int = 256, extent: float = 3.0) -> np.ndarray:
    """A 2-D histogram of points (N, 2) on [-extent, extent]^2 as a grey image (bins, bins, 1) in [0, 1]:
    white is empty, darker is denser (square-root scale); y points up."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"density_image takes points of shape (N, 2); got {points.shape}")
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=bins, range=[[-extent, extent]] * 2)
    counts = np.sqrt(counts[::-1])
    peak = counts.max()
    return (1.0 - (counts / peak if peak > 0 else counts))[..., None].astype(np.float32)


def write_png(path: str, image: np.ndarray) -> None:
    """Write a float image (H, W, C) with values in [0, 1] (C = 1 grey, 3 RGB) as an 8-bit PNG."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"write_png takes an image (H, W, C) with C = 1 or 3; got shape {image.shape}")
    pixels = (np.clip(np.nan_to_num(image.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format="PNG")


def read_png(path: str) -> np.ndarray:
    """Read a PNG as uint8 (H, W, C): C = 1 for grey images, 3 for colour (alpha is dropped)."""
    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"{path} is not a PNG file")
        grey = im.mode in ("1", "L", "I", "I;16")
        pixels = np.asarray(im.convert("L" if grey else "RGB"))
    return pixels[..., None] if grey else pixels
