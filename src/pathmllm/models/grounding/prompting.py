"""Pixel-level prompting of a :class:`~pathmllm.models.grounding.model.GroundingLM` (MedPLIB style).

The logic behind ``pathmllm ask`` / ``pathmllm ground``, usable from Python:

* :func:`parse_point`, :func:`parse_box`, :func:`parse_polygon` read the CLI's coordinate
  strings (pixels, x right, y down);
* :func:`region_from_options` turns **one** of point / box / mask file / polygon into a bool
  ``(H, W)`` region mask (reusing :func:`~pathmllm.data.mecovqa.point_mask`,
  :func:`~pathmllm.data.mecovqa.box_mask`, :func:`~pathmllm.data.mecovqa.load_mask` and
  :func:`~pathmllm.models.grounding.region.polygon_mask`), validated against the image;
* :func:`load_input` reads a plain image through PIL, or detects a whole-slide image
  (:func:`~pathmllm.wsi.reader.open_slide`); :func:`read_window` reads the context window
  around a level-0 box at a chosen µm/px;
* :func:`write_outputs` writes the mask PNGs, the overlay and (for slides) a QuPath-readable
  GeoJSON in level-0 coordinates (:func:`mask_geojson`).

Box convention: ``X0,Y0,X1,Y1`` is half-open, the pixels ``x0 <= x < x1``, ``y0 <= y < y1``
(so ``0,0,W,H`` is the whole image). Every bad input raises :class:`PromptError` (a
``ValueError``) whose message says what to do.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_POINT_RADIUS",
    "MAX_WINDOW",
    "InputImage",
    "PromptError",
    "Region",
    "SlideWindow",
    "disk_mask",
    "load_input",
    "mask_geojson",
    "overlay",
    "parse_box",
    "parse_point",
    "parse_polygon",
    "read_window",
    "region_from_options",
    "write_outputs",
]

#: radius in pixels of the disk a ``--point`` becomes (MedPLIB's demo uses 20 px)
DEFAULT_POINT_RADIUS = 20
#: a slide box is enlarged by this fraction of its width/height on each side
DEFAULT_CONTEXT = 0.5
#: largest side, in pixels at the requested µm/px, of a slide window given to the model
MAX_WINDOW = 4096
#: largest side of the read at the chosen pyramid level before resizing (bounded memory)
MAX_READ = 16384
#: extensions always read through PIL (never treated as a slide)
PLAIN_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class PromptError(ValueError):
    """Bad user input for a prompt (coordinates, mask file, image, slide window)."""


# ------------------------------------------------------------------------------ parsing
def _numbers(text: str, n: int, what: str, example: str) -> list[float]:
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise PromptError(f"{what} {text!r} is malformed: give {n} numbers separated by commas, e.g. {example}")
    return vals


def parse_point(text: str) -> tuple[float, float]:
    """``"X,Y"`` → ``(x, y)`` in pixels."""
    x, y = _numbers(text, 2, "--point", "--point 120,80")
    return x, y


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"`` → ``(x0, y0, x1, y1)``; needs ``x1 > x0`` and ``y1 > y0``."""
    x0, y0, x1, y1 = _numbers(text, 4, "--box", "--box 10,20,110,90")
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"--box {text!r} is empty or inverted: give X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0 "
                          "(top-left then bottom-right corner)")
    return x0, y0, x1, y1


def parse_polygon(text: str) -> list[tuple[float, float]]:
    """``"x1,y1 x2,y2 x3,y3 ..."`` → vertices (at least 3)."""
    pts = []
    for tok in str(text).split():
        try:
            pts.append(parse_point(tok))
        except PromptError:
            raise PromptError(f"--polygon {text!r} is malformed at {tok!r}: give vertices as "
                              "\"x1,y1 x2,y2 x3,y3 ...\" (space between vertices)") from None
    if len(pts) < 3:
        raise PromptError(f"--polygon {text!r} has {len(pts)} vertices; a polygon needs at least 3 "
                          "(\"x1,y1 x2,y2 x3,y3 ...\")")
    return pts


# ------------------------------------------------------------------------------ region masks
@dataclass
class Region:
    """A region prompt: its bool ``(H, W)`` mask and a JSON-able description."""

    kind: str
    mask: np.ndarray
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.spec, "pixels": int(self.mask.sum())}


def disk_mask(xy: tuple[float, float], size_hw: tuple[int, int], radius: int = DEFAULT_POINT_RADIUS) -> np.ndarray:
    """A disk of ``radius`` px around ``(x, y)`` (the square of :func:`point_mask` cut to a circle)."""
    from pathmllm.data.mecovqa import point_mask

    square = point_mask(xy, size_hw, radius)
    x, y = (int(round(float(v))) for v in xy)
    yy, xx = np.ogrid[: square.shape[0], : square.shape[1]]
    return square & ((xx - x) ** 2 + (yy - y) ** 2 <= radius * radius)


def _check_box_inside(box: tuple[float, float, float, float], size_hw: tuple[int, int], unit: str) -> None:
    h, w = size_hw
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise PromptError(f"--box {_fmt(box)} reaches outside the {w}x{h} (W x H) {unit}: keep 0 <= X0 < X1 <= {w} "
                          f"and 0 <= Y0 < Y1 <= {h}")


def _fmt(vals: Any) -> str:
    return ",".join(f"{v:g}" for v in vals)


def region_from_options(
    size_hw: tuple[int, int],
    *,
    point: str | None = None,
    box: str | None = None,
    mask: str | os.PathLike[str] | None = None,
    polygon: str | None = None,
    radius: int = DEFAULT_POINT_RADIUS,
) -> Region | None:
    """The region prompt given by at most one of the options, as a mask of the image size; None if none given."""
    given = [n for n, v in (("--point", point), ("--box", box), ("--mask", mask), ("--polygon", polygon))
             if v is not None]
    if len(given) > 1:
        raise PromptError(f"give at most one region prompt; got {' and '.join(given)}")
    if not given:
        return None
    h, w = int(size_hw[0]), int(size_hw[1])
    if point is not None:
        xy = parse_point(point)
        if radius < 0:
            raise PromptError(f"--radius {radius} must be >= 0")
        if not (0 <= xy[0] < w and 0 <= xy[1] < h):
            raise PromptError(f"--point {_fmt(xy)} lies outside the {w}x{h} (W x H) image: "
                              f"need 0 <= X < {w} and 0 <= Y < {h}")
        return Region("point", disk_mask(xy, (h, w), radius), {"x": xy[0], "y": xy[1], "radius": radius})
    if box is not None:
        from pathmllm.data.mecovqa import box_mask

        b = parse_box(box)
        _check_box_inside(b, (h, w), "image")
        x0, y0 = int(math.floor(b[0])), int(math.floor(b[1]))
        x1, y1 = max(x0 + 1, int(math.ceil(b[2]))), max(y0 + 1, int(math.ceil(b[3])))
        return Region("box", box_mask((x0, y0, x1 - 1, y1 - 1), (h, w)), {"box": list(b)})
    if polygon is not None:
        from pathmllm.models.grounding.region import polygon_mask

        pts = parse_polygon(polygon)
        bad = [p for p in pts if not (0 <= p[0] <= w and 0 <= p[1] <= h)]
        if bad:
            raise PromptError(f"--polygon vertex {_fmt(bad[0])} lies outside the {w}x{h} (W x H) image")
        try:
            m = polygon_mask(pts, (h, w))
        except ValueError as exc:
            raise PromptError(f"--polygon: {exc}") from None
        return Region("polygon", m, {"polygon": [list(p) for p in pts]})
    from pathmllm.data.mecovqa import load_mask

    path = Path(mask)  # type: ignore[arg-type]
    if not path.is_file():
        raise PromptError(f"--mask {path}: no such mask file; give a PNG with the region in white (>= 1)")
    try:
        m = load_mask(path, (h, w))
    except ValueError as exc:
        raise PromptError(f"--mask {exc}; resize the mask to the image's size") from None
    except OSError as exc:
        raise PromptError(f"--mask {path}: cannot read it as an image ({exc}); give a grayscale PNG") from None
    if not m.any():
        raise PromptError(f"--mask {path} is empty (no pixel >= 1); paint the region in white")
    return Region("mask", m, {"mask": str(path)})


# ------------------------------------------------------------------------------ inputs
@dataclass
class SlideWindow:
    """Where a window read from a slide lies in level-0 pixels: ``X0 = x + col * scale_x``."""

    x: int
    y: int
    width: int
    height: int
    scale_x: float
    scale_y: float
    mpp: float
    level: int
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "mpp": self.mpp,
                "level": self.level, "scale": [self.scale_x, self.scale_y], "box": list(self.box)}

    def to_level0(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous window pixel coordinates (pixel ``i`` spans ``[i, i+1)``) → level-0."""
        return self.x + np.asarray(cols) * self.scale_x, self.y + np.asarray(rows) * self.scale_y


@dataclass
class InputImage:
    """What the model sees: ``pixels`` ``(H, W, 3)`` uint8, and the slide window when read from a slide."""

    path: Path
    name: str
    pixels: np.ndarray
    slide: Any = None  # the open Slide, or None for a plain image
    window: SlideWindow | None = None

    @property
    def is_slide(self) -> bool:
        return self.slide is not None

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PromptError(f"{path}: cannot read it as an image ({type(exc).__name__}: {exc}); give a PNG/JPEG "
                          "or a whole-slide file (SVS, NDPI, pyramidal TIFF, ...)") from None


def _looks_like_slide(slide: Any) -> bool:
    if slide.backend == "pil":
        return False
    w, h = slide.dimensions
    small_plain_tiff = (slide.path.suffix.lower() in (".tif", ".tiff") and slide.level_count == 1
                        and not slide.has_mpp and max(w, h) <= MAX_WINDOW)
    return not small_plain_tiff


def load_input(path: str | os.PathLike[str], *, slide_mpp: float | None = None) -> InputImage:
    """Open ``path``: a whole-slide image (kept open, no pixels read yet) or a plain image (read now).

    A file is a slide when :func:`~pathmllm.wsi.reader.open_slide` opens it with a slide backend
    (not the PIL one); PNG/JPEG/BMP, and single-level TIFFs without µm/px of at most
    :data:`MAX_WINDOW` px a side, go through PIL. ``slide_mpp`` overrides the slide's level-0 µm/px.
    """
    from pathmllm.wsi.reader import slide_name

    path = Path(path)
    if not path.exists():
        raise PromptError(f"{path}: no such image or slide file")
    if path.is_file() and path.suffix.lower() in PLAIN_EXTENSIONS:
        return InputImage(path, path.stem, _read_pil(path))
    from pathmllm.wsi.errors import MissingMppError, SlideError
    from pathmllm.wsi.reader import open_slide

    try:
        slide = open_slide(path, mpp=slide_mpp)
    except MissingMppError as exc:  # an implausible --slide-mpp
        raise PromptError(str(exc).replace("--mpp", "--slide-mpp")) from None
    except SlideError:
        slide = None
    except ValueError as exc:  # e.g. an implausible --slide-mpp
        raise PromptError(str(exc)) from None
    if slide is not None and _looks_like_slide(slide):
        return InputImage(path, slide_name(path), np.zeros((0, 0, 3), np.uint8), slide=slide)
    if slide is not None:
        slide.close()
    return InputImage(path, path.stem, _read_pil(path))


def read_window(
    slide: Any,
    box: tuple[float, float, float, float],
    mpp: float,
    *,
    context: float = DEFAULT_CONTEXT,
    max_window: int = MAX_WINDOW,
) -> tuple[np.ndarray, SlideWindow, np.ndarray]:
    """Read the window around the level-0 ``box`` at ``mpp`` µm/px.

    The box is enlarged by ``context`` × its width/height on each side and clipped to the slide.
    Returns ``(pixels (h, w, 3) uint8, window, box mask (h, w) bool)``. Raises
    :class:`PromptError` for a box outside the slide, a missing slide µm/px, or a window larger
    than ``max_window`` px on a side.
    """
    from PIL import Image

    from pathmllm.wsi.errors import MissingMppError

    if mpp is None or not math.isfinite(mpp) or mpp <= 0:
        raise PromptError(f"--mpp {mpp} must be a positive number of µm per pixel (e.g. --mpp 0.5)")
    if context < 0:
        raise PromptError(f"--context {context} must be >= 0")
    w0, h0 = slide.dimensions
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"--box {_fmt(box)} is empty or inverted: need X1 > X0 and Y1 > Y0")
    _check_box_inside(box, (h0, w0), "slide (level-0 pixels)")
    try:
        base = slide.mpp
    except MissingMppError as exc:
        raise PromptError(f"{exc} (here: give the slide's own µm/px with --slide-mpp; --mpp is the reading "
                          "resolution)") from None
    bw, bh = x1 - x0, y1 - y0
    wx0 = max(0, int(math.floor(x0 - context * bw)))
    wy0 = max(0, int(math.floor(y0 - context * bh)))
    wx1 = min(w0, int(math.ceil(x1 + context * bw)))
    wy1 = min(h0, int(math.ceil(y1 + context * bh)))
    ww, wh = wx1 - wx0, wy1 - wy0
    ds = mpp / base
    out_w, out_h = max(1, int(round(ww / ds))), max(1, int(round(wh / ds)))
    if max(out_w, out_h) > max_window:
        raise PromptError(
            f"the window around --box (context {context:g}) is {out_w}x{out_h} px at {mpp:g} µm/px, more than "
            f"{max_window} px on a side: give a smaller --box, a smaller --context or a larger --mpp")
    downs = slide.level_downsamples
    level = max((i for i, d in enumerate(downs) if d <= ds * (1 + 1e-3)), key=lambda i: downs[i], default=0)
    lds = downs[level]
    rw, rh = max(1, int(math.ceil(ww / lds))), max(1, int(math.ceil(wh / lds)))
    if max(rw, rh) > MAX_READ:
        raise PromptError(f"reading the window needs {rw}x{rh} px at pyramid level {level} (the slide has no "
                          "level near the requested µm/px): give a smaller --box or --context")
    arr = slide.read_region((wx0, wy0), level, (rw, rh))
    # the read covers rw*lds level-0 px, possibly a little more than ww: crop to the window first
    cw, ch = min(rw, max(1, int(round(ww / lds)))), min(rh, max(1, int(round(wh / lds))))
    arr = arr[:ch, :cw]
    if (cw, ch) != (out_w, out_h):
        arr = np.asarray(Image.fromarray(arr).resize((out_w, out_h), Image.Resampling.BICUBIC))
    win = SlideWindow(wx0, wy0, ww, wh, ww / out_w, wh / out_h, float(mpp), int(level), tuple(box))  # type: ignore[arg-type]
    m = np.zeros((out_h, out_w), dtype=bool)
    c0 = int(math.floor((x0 - wx0) / win.scale_x))
    r0 = int(math.floor((y0 - wy0) / win.scale_y))
    c1 = max(c0 + 1, int(math.ceil((x1 - wx0) / win.scale_x)))
    r1 = max(r0 + 1, int(math.ceil((y1 - wy0) / win.scale_y)))
    m[max(0, r0):min(out_h, r1), max(0, c0):min(out_w, c1)] = True
    return np.ascontiguousarray(arr), win, m


# ------------------------------------------------------------------------------ outputs
def _outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    from scipy.ndimage import binary_dilation, binary_erosion

    edge = mask & ~binary_erosion(mask, border_value=0)
    return binary_dilation(edge, iterations=max(0, width - 1)) if width > 1 else edge


def overlay(image: np.ndarray, mask: np.ndarray | None, region: np.ndarray | None = None,
            color: tuple[int, int, int] = (0, 200, 255), alpha: float = 0.45,
            outline_color: tuple[int, int, int] = (255, 220, 0)) -> np.ndarray:
    """``image`` with ``mask`` tinted by ``color`` and the outline of ``region`` drawn."""
    out = image.astype(np.float32).copy()
    if mask is not None and mask.any():
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    out = out.round().clip(0, 255).astype(np.uint8)
    if region is not None and region.any():
        out[_outline(region)] = outline_color
    return out


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of ``mask`` as ``(N, 2)`` (col, row) arrays in continuous pixel coordinates."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    rings = []
    for c in find_contours(padded, 0.5):
        if len(c) < 4:
            continue
        rc = c - 1 + 0.5  # undo the pad; pixel i (centre i) spans [i, i+1) → +0.5
        ring = np.stack([rc[:, 1], rc[:, 0]], axis=1)
        if not np.allclose(ring[0], ring[-1]):
            ring = np.vstack([ring, ring[:1]])
        rings.append(ring)
    return rings


def _polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons ``[outer, hole, ...]``: a ring inside an odd number of other rings is a hole."""
    from skimage.measure import points_in_poly

    rings = _rings(mask)
    depth = []
    for i, r in enumerate(rings):
        p = r[:1]
        depth.append(sum(bool(points_in_poly(p, o)[0]) for j, o in enumerate(rings) if j != i))
    polys: list[list[np.ndarray]] = [[r] for r, d in zip(rings, depth) if d % 2 == 0]
    outer_idx = [i for i, d in enumerate(depth) if d % 2 == 0]
    for r, d in zip(rings, depth):
        if d % 2 == 1:
            # the innermost outer ring containing it
            best = None
            for k, oi in enumerate(outer_idx):
                if depth[oi] == d - 1 and bool(points_in_poly(r[:1], rings[oi])[0]):
                    best = k
                    break
            if best is not None:
                polys[best].append(r)
    return polys


def mask_geojson(masks: np.ndarray, window: SlideWindow | None = None, *, name: str = "pathmllm",
                 answer: str | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (QuPath annotations) of ``masks`` ``(n, h, w)``, one feature each.

    Coordinates are level-0 pixels when ``window`` is given (else the masks' own pixels), x right,
    y down; polygons come from :func:`skimage.measure.find_contours` around each pixel region.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    features = []
    for i, m in enumerate(masks):
        coords = []
        for poly in _polygons(m):
            rings = []
            for ring in poly:
                if window is not None:
                    xs, ys = window.to_level0(ring[:, 0], ring[:, 1])
                else:
                    xs, ys = ring[:, 0], ring[:, 1]
                rings.append([[round(float(x), 3), round(float(y), 3)] for x, y in zip(xs, ys)])
            coords.append(rings)
        if not coords:
            continue
        props: dict[str, Any] = {"objectType": "annotation", "name": f"{name} mask {i}",
                                 "classification": {"name": "pathmllm", "color": [0, 200, 255]},
                                 "mask_index": i, "pixels": int(m.sum())}
        if answer is not None:
            props["answer"] = answer
        features.append({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": coords},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def write_outputs(inp: InputImage, masks: Any, out_dir: str | os.PathLike[str], *,
                  region: np.ndarray | None = None, answer: str | None = None) -> dict[str, Any]:
    """Write ``<name>_mask.png`` (union, 0/255), ``<name>_mask_<i>.png`` when several masks,
    ``<name>_overlay.png`` and, for a slide, ``<name>_mask.geojson`` (level-0 coordinates).

    Returns ``{"masks": [paths], "overlay": path, "geojson": path or None, "mask_pixels": n}``.
    """
    m = np.asarray(masks.cpu() if hasattr(masks, "cpu") else masks).astype(bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != inp.size_hw:
        raise ValueError(f"masks of shape {m.shape} do not match the {inp.size_hw} image")
    out = Path(out_dir)
    union = m.any(axis=0)
    paths = [out / f"{inp.name}_mask.png"]
    _save_png(union.astype(np.uint8) * 255, paths[0])
    if len(m) > 1:
        for i, mi in enumerate(m):
            p = out / f"{inp.name}_mask_{i}.png"
            _save_png(mi.astype(np.uint8) * 255, p)
            paths.append(p)
    ov = out / f"{inp.name}_overlay.png"
    _save_png(overlay(inp.pixels, union, region), ov)
    gj = None
    if inp.window is not None:
        gj = out / f"{inp.name}_mask.geojson"
        tmp = gj.with_name(f".{gj.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(mask_geojson(m, inp.window, name=inp.name, answer=answer)) + "\n")
        os.replace(tmp, gj)
    return {"masks": [str(p) for p in paths], "overlay": str(ov), "geojson": str(gj) if gj else None,
            "mask_pixels": int(union.sum())}
