"""Builders of small test slides (written with tifffile, read back with OpenSlide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def tissue_image(width: int, height: int, blobs: list[tuple[int, int, int]] | None = None, seed: int = 0) -> np.ndarray:
    """White background with pink/purple textured discs ``(cx, cy, radius)`` like H&E tissue."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, dtype=np.uint8)
    if blobs is None:
        blobs = [(width // 3, height // 2, min(width, height) // 5), (2 * width // 3, height // 3, min(width, height) // 7)]
    yy, xx = np.mgrid[0:height, 0:width]
    for cx, cy, r in blobs:
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        noise = rng.integers(-25, 25, size=(int(inside.sum()), 3))
        base = np.array([200, 120, 180]) + noise
        img[inside] = np.clip(base, 0, 255).astype(np.uint8)
    return img


def write_pyramid(
    path: Path,
    image: np.ndarray,
    mpp: float | None = 0.25,
    downsamples: tuple[int, ...] = (1, 4),
    tile: int = 256,
    compression: str = "zlib",
) -> Path:
    """A tiled pyramidal TIFF OpenSlide opens as generic-tiff (levels are successive pages)."""
    kwargs = {}
    if mpp is not None:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for i, ds in enumerate(downsamples):
            level = image if ds == 1 else np.asarray(
                Image.fromarray(image).resize((image.shape[1] // ds, image.shape[0] // ds), Image.Resampling.BOX)
            )
            tif.write(
                level, tile=(tile, tile), photometric="rgb", compression=compression,
                subfiletype=0 if i == 0 else 1, **kwargs,
            )
    return path
