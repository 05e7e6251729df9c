"""OpenSlide: SVS, NDPI, MRXS, SCN, BIF, generic tiled TIFF, DICOM (via the openslide-bin wheel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathmllm.utils.optional import require
from pathmllm.wsi.backends.base import BACKENDS, SlideBackend, composite_on_white


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


@BACKENDS.register("openslide", extra="wsi")
class OpenSlideBackend(SlideBackend):
    name = "openslide"

    def __init__(self, path: str | Path) -> None:
        openslide = require("openslide", "reading slides with OpenSlide")
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items()}
        props = self.properties
        mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
        if mx and my:
            self.mpp_xy, self.mpp_source = (mx, my), "openslide.mpp-x/y"
        elif mx or my:
            v = mx or my
            self.mpp_xy, self.mpp_source = (v, v), "openslide.mpp-x/y (one axis)"
        self.objective_power = _float(props.get("openslide.objective-power"))
        self.vendor = props.get("openslide.vendor")

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        img = self._slide.read_region((int(location[0]), int(location[1])), int(level), size)
        return composite_on_white(np.asarray(img))

    def close(self) -> None:
        self._slide.close()
