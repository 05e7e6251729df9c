"""tifffile (through tiffslide): plain and tiled TIFF, OME-TIFF, QPTIFF, pyramids OpenSlide refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathmllm.utils.optional import require
from pathmllm.wsi.backends.base import BACKENDS, SlideBackend, to_rgb


@BACKENDS.register("tifffile", extra="wsi")
class TiffBackend(SlideBackend):
    name = "tifffile"

    def __init__(self, path: str | Path) -> None:
        tiffslide = require("tiffslide", "reading TIFF slides")
        self._slide = tiffslide.TiffSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        raw = dict(self._slide.properties)
        self.properties = {str(k): str(v) for k, v in raw.items() if v is not None}
        mx, my = raw.get("tiffslide.mpp-x"), raw.get("tiffslide.mpp-y")
        if mx and my:
            self.mpp_xy, self.mpp_source = (float(mx), float(my)), "tiffslide.mpp-x/y"
        op = raw.get("tiffslide.objective-power")
        self.objective_power = float(op) if op else None
        self.vendor = raw.get("tiffslide.vendor") or "tiff"

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        arr = self._slide.read_region(
            (int(location[0]), int(location[1])), int(level), size, as_array=True, padding=False
        )
        return to_rgb(np.asarray(arr))

    def close(self) -> None:
        self._slide.close()
