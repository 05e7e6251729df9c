"""DICOM whole-slide images (VL Whole Slide Microscopy): wsidicom, then a pydicom fallback.

OpenSlide (tried first for ``.dcm``) and wsidicom both refuse some valid files, e.g.
a single-file slide without the level metadata they expect. The pydicom fallback
assembles the tiled frames itself (TILED_FULL row-major order, or the per-frame
positions of TILED_SPARSE) and decodes only the frames a region touches.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pathmllm.utils.optional import require
from pathmllm.wsi.backends.base import BACKENDS, SlideBackend, to_rgb

log = logging.getLogger(__name__)
T = TypeVar("T")



@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's per-element warnings (over-long UIDs, JFIF-marked RGB frames),
    which real slides are full of and which say nothing the user can act on."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def quietly(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` under :func:`quiet_pydicom` (pydicom warns lazily, when values are read)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with quiet_pydicom():
            return fn(*args, **kwargs)

    return wrapper

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


@quietly
def _series_files(path: Path) -> list[Path]:
    """All DICOM files of ``path``'s series: the file's siblings with the same SeriesInstanceUID."""
    pydicom = require("pydicom", "reading DICOM slides")
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        first = next((p for p in candidates if p.suffix.lower() == ".dcm"), None)
        if first is None:
            raise FileNotFoundError(f"no .dcm files in folder {path}")
        path = first
    else:
        candidates = sorted(p for p in path.parent.iterdir() if p.suffix.lower() == ".dcm")
    head = pydicom.dcmread(path, stop_before_pixels=True)
    series = head.get("SeriesInstanceUID")
    files = [path]
    for p in candidates:
        if p == path:
            continue
        try:
            other = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception as exc:  # a stray non-DICOM file beside the slide is not our business
            log.debug("skipping %s: %s", p, exc)
            continue
        if series is not None and other.get("SeriesInstanceUID") == series:
            files.append(p)
    return files


def dicom_mpp(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    """µm/px from PixelSpacing (mm), else from ImagedVolumeWidth/Height when both axes agree."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
        if row_mm > 0 and col_mm > 0:
            return (col_mm * 1000.0, row_mm * 1000.0), "DICOM PixelSpacing"
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    width_mm, height_mm = ds.get("ImagedVolumeWidth"), ds.get("ImagedVolumeHeight")
    cols, rows = ds.get("TotalPixelMatrixColumns"), ds.get("TotalPixelMatrixRows")
    if width_mm and height_mm and cols and rows:
        mx, my = float(width_mm) * 1000.0 / int(cols), float(height_mm) * 1000.0 / int(rows)
        if abs(mx - my) / max(mx, my) < 0.02:
            return (mx, my), "DICOM ImagedVolumeWidth/Height"
        log.warning(
            "ignoring DICOM ImagedVolumeWidth/Height: they imply %.3f x %.3f µm/px, which disagree",
            mx,
            my,
        )
    return None, None


def _dicom_info(ds: Any) -> tuple[float | None, str | None, dict[str, str]]:
    objective = None
    try:
        objective = float(ds.OpticalPathSequence[0].ObjectiveLensPower)
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    props = {}
    for key in ("Manufacturer", "ManufacturerModelName", "SeriesInstanceUID", "StudyInstanceUID"):
        if ds.get(key) is not None:
            props[f"dicom.{key}"] = str(ds.get(key))
    vendor = str(ds.get("Manufacturer") or "dicom")
    return objective, vendor, props


@BACKENDS.register("wsidicom", extra="wsi")
class WsiDicomBackend(SlideBackend):
    name = "wsidicom"

    @quietly
    def __init__(self, path: str | Path) -> None:
        wsidicom = require("wsidicom", "reading DICOM slides")
        path = Path(path)
        files = _series_files(path)
        self._wsi = wsidicom.WsiDicom.open(files if len(files) > 1 or path.is_file() else path)
        levels = list(self._wsi.levels)
        base = levels[0].size
        self._level_ids = [lvl.level for lvl in levels]
        self.level_dimensions = [(int(lvl.size.width), int(lvl.size.height)) for lvl in levels]
        self.level_downsamples = [base.width / float(w) for w, _ in self.level_dimensions]
        mpp = self._wsi.mpp
        if mpp is not None and mpp.width and mpp.height:
            self.mpp_xy, self.mpp_source = (float(mpp.width), float(mpp.height)), "wsidicom mpp"
        pydicom = require("pydicom")
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        self.objective_power, self.vendor, self.properties = _dicom_info(head)

    @quietly
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (int(round(location[0] / ds)), int(round(location[1] / ds)))
        arr = self._wsi.read_region(loc, self._level_ids[level], size, as_array=True)
        return to_rgb(np.asarray(arr))

    def close(self) -> None:
        self._wsi.close()


class _Level:
    """One pyramid level of the pydicom fallback: a dataset and where each frame lies."""

    def __init__(self, ds: Any, path: Path) -> None:
        self.ds = ds
        self.path = path
        self.width = int(ds.TotalPixelMatrixColumns)
        self.height = int(ds.TotalPixelMatrixRows)
        self.tile_w = int(ds.Columns)
        self.tile_h = int(ds.Rows)
        self.n_frames = int(ds.get("NumberOfFrames", 1))
        self.tiles_x = math.ceil(self.width / self.tile_w)
        self.tiles_y = math.ceil(self.height / self.tile_h)
        self.frame_at: dict[tuple[int, int], int] = {}
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        sparse = str(ds.get("DimensionOrganizationType", "")).upper() == "TILED_SPARSE"
        if sparse and per_frame is not None:
            for i, item in enumerate(per_frame):
                pos = item.PlanePositionSlideSequence[0]
                col = (int(pos.ColumnPositionInTotalImagePixelMatrix) - 1) // self.tile_w
                row = (int(pos.RowPositionInTotalImagePixelMatrix) - 1) // self.tile_h
                self.frame_at.setdefault((col, row), i)
        else:
            if self.n_frames < self.tiles_x * self.tiles_y:
                raise ValueError(
                    f"{path.name}: {self.n_frames} frames cannot tile a {self.width}x{self.height} "
                    f"matrix of {self.tile_w}x{self.tile_h} tiles (need {self.tiles_x * self.tiles_y})"
                )
            for row in range(self.tiles_y):
                for col in range(self.tiles_x):
                    self.frame_at[(col, row)] = row * self.tiles_x + col


@BACKENDS.register("pydicom", extra="wsi")
class PydicomBackend(SlideBackend):
    """Assembles a DICOM WSI from its tiled frames with pydicom (slow path, always works)."""

    name = "pydicom"
    cache_frames = 256

    @quietly
    def __init__(self, path: str | Path) -> None:
        pydicom = require("pydicom", "reading DICOM slides")
        self._pixels = require("pydicom.pixels")
        path = Path(path)
        levels = []
        for f in _series_files(path):
            ds = pydicom.dcmread(f, defer_size="1 KB")
            if str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
                continue
            image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
            if {"LABEL", "OVERVIEW", "THUMBNAIL"} & set(image_type):
                continue
            if ds.get("TotalPixelMatrixColumns") is None:
                continue
            levels.append(_Level(ds, f))
        if not levels:
            raise ValueError(f"{path} holds no VL Whole Slide Microscopy image with a pixel matrix")
        levels.sort(key=lambda lv: -lv.width)
        self._levels = levels
        base = levels[0]
        self.level_dimensions = [(lv.width, lv.height) for lv in levels]
        self.level_downsamples = [base.width / float(lv.width) for lv in levels]
        self.mpp_xy, self.mpp_source = dicom_mpp(base.ds)
        self.objective_power, self.vendor, self.properties = _dicom_info(base.ds)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @quietly
    def _frame(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        arr = to_rgb(np.asarray(self._pixels.pixel_array(self._levels[level].ds, index=index)))
        self._cache[key] = arr
        if len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return arr

    @quietly
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        lv = self._levels[level]
        ds = self.level_downsamples[level]
        x0, y0 = int(round(location[0] / ds)), int(round(location[1] / ds))
        w, h = size
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        for row in range(y0 // lv.tile_h, min(lv.tiles_y, (y0 + h - 1) // lv.tile_h + 1)):
            for col in range(x0 // lv.tile_w, min(lv.tiles_x, (x0 + w - 1) // lv.tile_w + 1)):
                index = lv.frame_at.get((col, row))
                if index is None:
                    continue  # a sparse slide's missing tile reads as background
                tile = self._frame(level, index)
                tx, ty = col * lv.tile_w, row * lv.tile_h
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1 = min(x0 + w, tx + tile.shape[1], lv.width)
                sy1 = min(y0 + h, ty + tile.shape[0], lv.height)
                if sx1 <= sx0 or sy1 <= sy0:
                    continue
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out
