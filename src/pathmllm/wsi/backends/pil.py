"""PIL: PNG, JPEG and BMP images as single-level slides (the whole image is decoded once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pathmllm.wsi.backends.base import BACKENDS, SlideBackend, to_rgb

#: decompression-bomb guard: plain images larger than this should be converted to a pyramid
MAX_PIXELS = 40_000 * 40_000


@BACKENDS.register("pil")
class PilBackend(SlideBackend):
    name = "pil"

    def __init__(self, path: str | Path) -> None:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(
                    f"{img.width}x{img.height} px is too large to decode as a plain image; "
                    "convert it to a pyramidal TIFF (e.g. `vips tiffsave --tile --pyramid`)"
                )
            dpi = img.info.get("dpi")
            fmt = img.format
            img.load()
            self._array = to_rgb(np.asarray(img.convert("RGBA") if img.mode in ("P", "LA", "PA") else img))
        h, w = self._array.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        self.properties = {"pil.format": str(fmt)}
        if dpi and dpi[0] and dpi[1]:
            # dots per inch -> µm per pixel; usually 72 or 96 dpi, which the sanity check rejects
            self.mpp_xy = (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]))
            self.mpp_source = "image dpi"
            self.properties["pil.dpi"] = f"{dpi[0]},{dpi[1]}"
        self.vendor = f"image/{str(fmt).lower()}"

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        x, y = int(location[0]), int(location[1])
        return self._array[y : y + size[1], x : x + size[0]].copy()
