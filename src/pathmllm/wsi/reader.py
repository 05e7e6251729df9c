"""One :class:`Slide` API over several reading backends.

>>> slide = open_slide("CMU-1-Small-Region.svs")
>>> slide.mpp, slide.dimensions
(0.499, (2220, 2967))
>>> patch = slide.read_patch((1000, 1000), size=256, mpp=0.5)   # (256, 256, 3) uint8 RGB
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathmllm.wsi.backends import BACKENDS, SlideBackend, auto_order, load_all
from pathmllm.wsi.backends.base import slide_extension
from pathmllm.wsi.errors import (
    ImplausibleMppError,
    MissingMppError,
    SlideOpenError,
    SlideReadError,
)
from pathmllm.wsi.resolution import (
    DEFAULT_MPP_TOLERANCE,
    ReadPlan,
    check_mpp,
    nominal_magnification,
    plan_read,
)

log = logging.getLogger(__name__)

#: regions are read in blocks of at most this many pixels per side (bounded memory)
READ_BLOCK = 4096


def slide_name(path: str | os.PathLike[str]) -> str:
    """The slide id used for output folders: the file name without its slide extension."""
    p = Path(path)
    ext = slide_extension(p)
    name = p.name
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else p.stem


class Slide:
    """A whole-slide image (or a plain image) read through one of several backends.

    Args:
        path: the slide file (or a folder holding one DICOM series).
        backend: ``"auto"`` tries the backends that suit the extension in order;
            or one of ``openslide``, ``tifffile``, ``wsidicom``, ``pydicom``, ``pil``.
        mpp: µm per level-0 pixel, overriding the metadata (the CLI's ``--mpp``).
    """

    def __init__(
        self, path: str | os.PathLike[str], backend: str = "auto", mpp: float | None = None
    ) -> None:
        self.path = Path(path)
        self.name = slide_name(self.path)
        self._mpp_override = mpp
        self._backend_request = backend
        self._backend = self._open(backend)
        self._init_resolution()

    # ------------------------------------------------------------------ opening
    def _open(self, backend: str) -> SlideBackend:
        path = self.path
        if not path.exists():
            raise SlideOpenError(f"{path}: no such file or folder; check the path", str(path))
        if path.is_file() and path.stat().st_size == 0:
            raise SlideOpenError(f"{path}: the file is empty (0 bytes); re-copy the slide", str(path))
        load_all()
        names = auto_order(path) if backend == "auto" else (backend,)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose auto or one of {BACKENDS.names()}")
        reasons = []
        for name in names:
            cls = BACKENDS.get(name)
            try:
                be = cls(path)
            except ImportError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            except Exception as exc:  # each library raises its own types for a bad file
                reasons.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            problem = _probe(be)
            if problem is None:
                if reasons:
                    log.info("%s: opened with %s after %s", path.name, name, "; ".join(reasons))
                return be
            reasons.append(f"{name}: opened but {problem}")
            be.close()
        hint = (
            "is it a complete, supported slide file? Supported: SVS, NDPI, MRXS, SCN, BIF, "
            "(OME-)TIFF, QPTIFF, DICOM WSI, PNG/JPEG"
        )
        readish = [r for r in reasons if "opened but" in r]
        cls_err = SlideReadError if readish else SlideOpenError
        raise cls_err(f"{path}: cannot read it ({'; '.join(reasons)}); {hint}", str(path))

    def _init_resolution(self) -> None:
        be = self._backend
        self.mpp_problem: str | None = None
        if self._mpp_override is not None:
            self._mpp_xy: tuple[float, float] | None = (self._mpp_override, self._mpp_override)
            self.mpp_source: str | None = "override (--mpp)"
            problem = check_mpp(self._mpp_xy, "--mpp")
            if problem:
                raise ImplausibleMppError(f"{self.path}: {problem}", str(self.path))
        else:
            self._mpp_xy, self.mpp_source = be.mpp_xy, be.mpp_source
            if self._mpp_xy is not None:
                self.mpp_problem = check_mpp(self._mpp_xy, f"its metadata ({be.mpp_source})")

    # ------------------------------------------------------------------ metadata
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self._backend.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._backend.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._backend.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._backend.properties)

    @property
    def objective_power(self) -> float | None:
        return self._backend.objective_power

    @property
    def vendor(self) -> str | None:
        return self._backend.vendor

    @property
    def has_mpp(self) -> bool:
        return self._mpp_xy is not None and self.mpp_problem is None

    @property
    def mpp(self) -> float:
        """µm per level-0 pixel. Raises :class:`MissingMppError` when unknown or implausible."""
        if self._mpp_xy is None:
            raise MissingMppError(
                f"{self.path}: the slide has no µm/px in its metadata; pass it with --mpp "
                "(e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x) or mpp= in the API",
                str(self.path),
            )
        if self.mpp_problem:
            raise ImplausibleMppError(
                f"{self.path}: {self.mpp_problem}; pass the true value with --mpp "
                "(e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)",
                str(self.path),
            )
        return float(sum(self._mpp_xy) / 2.0)

    @property
    def level_mpps(self) -> list[float]:
        return [self.mpp * ds for ds in self.level_downsamples]

    @property
    def magnification(self) -> float:
        """Nominal objective power from µm/px (TRIDENT's table)."""
        return nominal_magnification(self.mpp)

    def info(self) -> dict[str, Any]:
        """Everything ``pathmllm slide info`` shows, JSON-serialisable."""
        mpp = self.mpp if self.has_mpp else None
        raw = self._mpp_xy
        return {
            "path": str(self.path),
            "name": self.name,
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {
                    "level": i,
                    "dimensions": list(d),
                    "downsample": round(ds, 6),
                    "mpp": round(mpp * ds, 6) if mpp else None,
                }
                for i, (d, ds) in enumerate(zip(self.level_dimensions, self.level_downsamples))
            ],
            "mpp": mpp,
            "mpp_metadata": list(raw) if raw else None,
            "mpp_source": self.mpp_source,
            "mpp_problem": self.mpp_problem if raw else "no µm/px in metadata: pass --mpp",
            "objective_power": self.objective_power,
            "magnification": nominal_magnification(mpp) if mpp else None,
        }

    # ------------------------------------------------------------------ reading
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read ``size`` pixels at ``level`` from level-0 ``location``; ``(h, w, 3)`` uint8 RGB.

        Parts of the region outside the slide read as white (255), like OpenSlide's padding.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} does not exist; the slide has {self.level_count}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # the region in this level's pixel frame
        lx, ly = int(np.floor(location[0] / ds)), int(np.floor(location[1] / ds))
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        out = None
        if x1 > x0 and y1 > y0 and (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h):
            return self._read(location if (lx, ly) == (x0, y0) else _l0(x0, y0, ds), level, (w, h))
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            inner = self._read(_l0(x0, y0, ds), level, (x1 - x0, y1 - y0))
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = inner
        return out

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            arr = self._backend.read_region((int(location[0]), int(location[1])), level, size)
        except Exception as exc:  # backends raise library-specific errors on corrupt data
            raise SlideReadError(
                f"{self.path}: reading {size[0]}x{size[1]} px at level {level}, level-0 "
                f"{tuple(location)} failed ({type(exc).__name__}: {exc}); the file is probably "
                "corrupt or truncated: re-copy or re-export it",
                str(self.path),
            ) from exc
        if arr.shape[:2] != (size[1], size[0]):
            raise SlideReadError(
                f"{self.path}: backend {self.backend} returned {arr.shape[1]}x{arr.shape[0]} px "
                f"for a {size[0]}x{size[1]} request at level {level}",
                str(self.path),
            )
        return arr

    def plan(self, mpp: float, size: int, tolerance: float = DEFAULT_MPP_TOLERANCE) -> ReadPlan:
        """The level, read size and level-0 footprint for ``size`` px patches at ``mpp`` µm/px."""
        plan = plan_read(self.mpp, self.level_downsamples, mpp, size, tolerance)
        if plan.downsample < 1:
            log.warning(
                "%s: %g µm/px is finer than the scan (%g µm/px); patches are upsampled",
                self.name,
                mpp,
                self.mpp,
            )
        return plan

    def best_level_for(self, mpp: float) -> int:
        """The coarsest level at least as fine as ``mpp`` µm/px (chosen by resolution, not index)."""
        return self.plan(mpp, 1).level

    def read_patch(
        self,
        location: tuple[int, int],
        size: int,
        mpp: float | None = None,
        plan: ReadPlan | None = None,
    ) -> np.ndarray:
        """A ``(size, size, 3)`` patch at ``mpp`` µm/px whose top-left is level-0 ``location``."""
        if plan is None:
            if mpp is None:
                raise ValueError("give mpp (µm/px) or a ReadPlan")
            plan = self.plan(mpp, size)
        arr = self.read_region(location, plan.level, (plan.read_size, plan.read_size))
        if plan.needs_resize:
            arr = resize(arr, (plan.patch_size, plan.patch_size))
        return arr

    def thumbnail(self, mpp: float | None = None, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """A downsampled view and its level-0 px per thumbnail px.

        Reads from the coarsest level finer than the request, block by block, so memory
        stays bounded by the output size even on slides without a pyramid. With
        ``mpp`` the scale is set by resolution (needs µm/px), else by ``max_size``.
        """
        w0, h0 = self.dimensions
        if mpp is not None:
            scale = mpp / self.mpp
        else:
            scale = max(w0, h0) / float(max_size)
        scale = max(scale, 1.0)
        out_w, out_h = max(1, int(round(w0 / scale))), max(1, int(round(h0 / scale)))
        level = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= scale * (1 + 1e-6) and ds >= self.level_downsamples[level]:
                level = i
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        canvas = Image.new("RGB", (out_w, out_h), (255, 255, 255))
        factor = scale / ds  # level px per output px
        block = max(1, int(READ_BLOCK // max(1.0, factor)) * max(1, int(round(factor))))
        block = max(block, int(np.ceil(factor)))
        for by in range(0, lh, block):
            for bx in range(0, lw, block):
                bw, bh = min(block, lw - bx), min(block, lh - by)
                ox0, oy0 = int(round(bx / factor)), int(round(by / factor))
                ox1, oy1 = int(round((bx + bw) / factor)), int(round((by + bh) / factor))
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                arr = self._read(_l0(bx, by, ds), level, (bw, bh))
                tile = Image.fromarray(arr).resize((ox1 - ox0, oy1 - oy0), Image.Resampling.BOX)
                canvas.paste(tile, (ox0, oy0))
        return np.asarray(canvas), w0 / float(out_w)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # backends hold C handles: a pickled Slide reopens itself in the other process
        return {"path": self.path, "backend": self.backend, "mpp": self._mpp_override}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["backend"], state["mpp"])  # type: ignore[misc]

    def __repr__(self) -> str:
        mpp = f"{self.mpp:g}" if self.has_mpp else "?"
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {w}x{h}, {self.level_count} levels, {mpp} µm/px, {self.backend})"


def _l0(x: int, y: int, ds: float) -> tuple[int, int]:
    return int(round(x * ds)), int(round(y * ds))


def _probe(backend: SlideBackend) -> str | None:
    """Read one small block of the coarsest level, so a corrupt file fails here, clearly."""
    try:
        level = len(backend.level_dimensions) - 1
        w, h = backend.level_dimensions[level]
        if w <= 0 or h <= 0:
            return f"it reports an empty image ({w}x{h})"
        size = (min(w, 64), min(h, 64))
        arr = backend.read_region((0, 0), level, size)
        if arr.shape[:2] != (size[1], size[0]):
            return f"a probe read returned {arr.shape} for {size}"
    except Exception as exc:  # library-specific decode errors
        return f"its pixel data cannot be decoded ({type(exc).__name__}: {exc})"
    return None


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB array to ``(width, height)`` with antialiasing (PIL bicubic, as TRIDENT)."""
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))


def open_slide(
    path: str | os.PathLike[str], backend: str = "auto", mpp: float | None = None
) -> Slide:
    """Open a slide; see :class:`Slide`."""
    return Slide(path, backend=backend, mpp=mpp)
