"""The interface every slide backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pathmllm.utils.registry import Registry

BACKENDS: Registry[type[SlideBackend]] = Registry("slide backend")

#: file extension -> backends tried in this order when ``backend="auto"``
_EXTENSION_ORDER: dict[str, tuple[str, ...]] = {
    ".svs": ("openslide", "tifffile"),
    ".tif": ("openslide", "tifffile"),
    ".tiff": ("openslide", "tifffile"),
    ".ndpi": ("openslide", "tifffile"),
    ".scn": ("openslide", "tifffile"),
    ".bif": ("openslide", "tifffile"),
    ".qptiff": ("tifffile", "openslide"),
    ".ome.tif": ("tifffile", "openslide"),
    ".ome.tiff": ("tifffile", "openslide"),
    ".mrxs": ("openslide",),
    ".vms": ("openslide",),
    ".vmu": ("openslide",),
    ".svslide": ("openslide",),
    ".dcm": ("openslide", "wsidicom", "pydicom"),
    ".png": ("pil",),
    ".jpg": ("pil",),
    ".jpeg": ("pil",),
    ".bmp": ("pil",),
}

#: every extension pathmllm treats as a slide when it scans a folder
SLIDE_EXTENSIONS: tuple[str, ...] = tuple(sorted(_EXTENSION_ORDER, key=len, reverse=True))


def slide_extension(path: str | Path) -> str:
    """The slide extension of ``path`` (``.ome.tiff`` counts as one), lower case, or ``""``."""
    name = Path(path).name.lower()
    for ext in SLIDE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def auto_order(path: str | Path) -> tuple[str, ...]:
    """Backends to try, in order, for ``path`` (a DICOM folder goes to the DICOM readers)."""
    p = Path(path)
    if p.is_dir():
        return ("openslide", "wsidicom", "pydicom")
    return _EXTENSION_ORDER.get(slide_extension(p), ("openslide", "tifffile", "pil"))


class SlideBackend(ABC):
    """A pyramid of RGB images. Subclasses fill the attributes in ``__init__``.

    Coordinates passed to :meth:`read_region` are level-0 pixels ``(x, y)`` and the
    requested region lies entirely inside the level (the :class:`Slide` clips and pads).
    """

    name: str = ""
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    properties: dict[str, str]
    #: (mpp_x, mpp_y) as found in the metadata, or None
    mpp_xy: tuple[float, float] | None = None
    #: where mpp_xy came from, e.g. "openslide.mpp-x"
    mpp_source: str | None = None
    objective_power: float | None = None
    vendor: str | None = None

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Return ``(size[1], size[0], 3)`` uint8 RGB read at ``level`` from level-0 ``location``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA (OpenSlide's output) over a white background -> RGB uint8."""
    if rgba.ndim == 2:
        return np.repeat(rgba[..., None], 3, axis=2)
    if rgba.shape[2] == 3:
        return rgba
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.uint16) + (255 - alpha.astype(np.uint16))[..., None]
    return np.minimum(out, 255).astype(np.uint8)


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Any 2-D grey, RGB or RGBA (straight alpha) uint8/uint16 array -> RGB uint8."""
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255:
            arr = (arr.astype(np.float32) / np.iinfo(arr.dtype).max * 255).round()
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        a = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * a + 255.0 * (1 - a)
        return rgb.round().astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])
