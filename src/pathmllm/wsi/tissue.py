"""Tissue detection without any model: saturation thresholding with morphology.

Works on a thumbnail (default 8 µm/px, at most 4096 px a side, so memory does not grow
with slide size). Robust to white and black backgrounds (dark pixels are never tissue),
to pen marks (strongly saturated green and blue hues are removed), and to faint tissue
(the threshold is Otsu's on saturation, clamped to a sensible range).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from pathmllm.io.geojson import feature, polygonal

log = logging.getLogger(__name__)


@dataclass
class TissueConfig:
    """Parameters of :func:`detect_tissue`. Areas are in µm², so defaults hold at any scan resolution."""

    mpp: float = 8.0
    """µm/px of the thumbnail the mask is computed on (coarsened if the thumbnail would exceed max_size)."""
    max_size: int = 4096
    """Largest thumbnail side in px; bounds memory on huge slides."""
    min_saturation: float = 0.05
    """Lower clamp of the saturation threshold (0-1)."""
    max_saturation: float = 0.15
    """Upper clamp of the saturation threshold: Otsu on an all-tissue image would cut tissue in two."""
    min_value: float = 0.2
    """Pixels darker than this (HSV value, 0-1) are background: black borders, black pen, dust."""
    remove_pen: bool = True
    """Drop strongly saturated green and blue pixels (marker pen)."""
    closing_um: float = 16.0
    """Radius of the morphological closing that joins tissue fragments, µm."""
    min_area_um2: float = 10_000.0
    """Tissue pieces smaller than this are dropped (0.01 mm²)."""
    max_hole_um2: float = 50_000.0
    """Holes smaller than this are filled; larger ones (lumens, tears) are kept."""


@dataclass
class TissueMask:
    """A tissue mask at thumbnail scale and its polygons in level-0 pixels."""

    mask: np.ndarray
    """``(height, width)`` bool, True where tissue."""
    downsample: tuple[float, float]
    """Level-0 px per mask px along x and y."""
    mpp: float | None
    """µm per mask pixel (None when the slide's µm/px is unknown)."""
    polygons: list[Polygon] = field(default_factory=list)
    """Tissue pieces, level-0 px, each valid, with holes."""
    threshold: float = 0.0
    """Saturation threshold that was used."""

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    def area_um2(self, level0_mpp: float) -> float:
        return float(sum(p.area for p in self.polygons)) * level0_mpp**2

    def geojson_features(self, level0_mpp: float | None = None) -> list[dict[str, Any]]:
        """QuPath annotations, one per tissue piece, class ``Tissue``."""
        feats = []
        for i, poly in enumerate(self.polygons):
            measurements = {"area_um2": poly.area * level0_mpp**2} if level0_mpp else {}
            feats.append(
                feature(
                    poly,
                    object_type="annotation",
                    classification="Tissue",
                    color=(0, 160, 0),
                    name=f"tissue {i}",
                    measurements=measurements,
                    extra_properties={"tissue_id": i},
                )
            )
        return feats


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV saturation, value (0-1, float32) and hue (degrees) of an RGB uint8 image."""
    arr = rgb.astype(np.float32) / 255.0
    mx = arr.max(axis=2)
    mn = arr.min(axis=2)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    safe = np.maximum(delta, 1e-6)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = (hue * 60.0).astype(np.float32)
    return sat, mx, hue


def _saturation_and_usable(rgb: np.ndarray, cfg: TissueConfig, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Saturation and the not-dark, not-pen mask, computed in blocks of ``rows`` rows so the
    float temporaries stay small on large thumbnails (memory flat in slide size)."""
    h = rgb.shape[0]
    sat = np.empty(rgb.shape[:2], dtype=np.float32)
    usable = np.empty(rgb.shape[:2], dtype=bool)
    for r0 in range(0, h, rows):
        s, val, hue = saturation_value(rgb[r0 : r0 + rows])
        ok = val >= cfg.min_value
        if cfg.remove_pen:
            green = (hue >= 60) & (hue < 180) & (s > 0.2)
            blue = (hue >= 180) & (hue < 250) & (s > 0.45)
            ok &= ~(green | blue)
        sat[r0 : r0 + rows] = s
        usable[r0 : r0 + rows] = ok
    return sat, usable


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])  # class 0 is bins 0..argmax inclusive


def tissue_mask_from_rgb(
    rgb: np.ndarray, mask_mpp: float | None, config: TissueConfig | None = None
) -> tuple[np.ndarray, float]:
    """The boolean tissue mask of an RGB thumbnail and the saturation threshold used.

    Areas in ``config`` are converted with ``mask_mpp``; when it is ``None`` they are
    read as if the thumbnail were at ``config.mpp``.
    """
    cfg = config or TissueConfig()
    mpp = mask_mpp or cfg.mpp
    sat, usable = _saturation_and_usable(rgb, cfg)
    candidates = sat[usable]
    threshold = float(np.clip(otsu(candidates), cfg.min_saturation, cfg.max_saturation))
    mask = usable & (sat > threshold)
    radius = max(1, int(round(cfg.closing_um / mpp)))
    if radius >= 1:
        structure = _disk(radius)
        padded = np.pad(mask, radius)
        padded = ndi.binary_closing(padded, structure=structure)
        mask = padded[radius:-radius, radius:-radius]
    px_area = mpp * mpp
    mask = _fill_small_holes(mask, int(cfg.max_hole_um2 / px_area))
    mask = _remove_small(mask, int(np.ceil(cfg.min_area_um2 / px_area)))
    return mask, threshold


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y) <= radius * radius


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    holes = ~mask
    labels, n = ndi.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False  # background touching the edge is not a hole
    return mask | fill[labels]


def mask_to_polygons(mask: np.ndarray, downsample: tuple[float, float]) -> list[Polygon]:
    """Polygons (level-0 px, with holes) tracing the pixel edges of ``mask``."""
    from skimage import measure

    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    rings = []
    for c in contours:
        if len(c) < 4:
            continue
        # (row, col) in padded coords -> (x, y) in mask coords
        xy = np.stack([c[:, 1] - 1 + 0.5, c[:, 0] - 1 + 0.5], axis=1)
        poly = Polygon(xy)
        if poly.area <= 0:
            poly = polygonal(poly) or Polygon()
        if not poly.is_empty and poly.area > 0:
            rings.append(poly)
    # nesting depth decides: even depth = tissue outline, odd depth = a hole in it
    rings.sort(key=lambda p: p.area, reverse=True)
    depth = [0] * len(rings)
    parent = [-1] * len(rings)
    for i, ring in enumerate(rings):
        point = ring.representative_point()
        for j in range(i - 1, -1, -1):
            if rings[j].area > ring.area and rings[j].contains(point):
                if parent[i] == -1 or rings[j].area < rings[parent[i]].area:
                    parent[i] = j
        depth[i] = depth[parent[i]] + 1 if parent[i] >= 0 else 0
    polys = []
    for i, ring in enumerate(rings):
        if depth[i] % 2:
            continue
        holes = [rings[k].exterior for k in range(len(rings)) if parent[k] == i and depth[k] % 2]
        poly = Polygon(ring.exterior, holes)
        poly = poly.simplify(0.3, preserve_topology=True)
        fixed = polygonal(poly)
        if fixed is None:
            continue
        sx, sy = downsample
        scaled = _scale(fixed, sx, sy)
        polys.extend(scaled.geoms if isinstance(scaled, MultiPolygon) else [scaled])
    return polys


def _scale(geom: Polygon | MultiPolygon, sx: float, sy: float) -> Polygon | MultiPolygon:
    from shapely import affinity

    return affinity.scale(geom, xfact=sx, yfact=sy, origin=(0, 0))


def detect_tissue(slide: Any, config: TissueConfig | None = None) -> TissueMask:
    """Find tissue on ``slide`` (a :class:`pathmllm.wsi.Slide`); returns mask and polygons."""
    cfg = config or TissueConfig()
    w0, h0 = slide.dimensions
    if slide.has_mpp:
        scale = max(cfg.mpp / slide.mpp, max(w0, h0) / cfg.max_size, 1.0)
    else:
        scale = max(max(w0, h0) / cfg.max_size, 1.0)
    thumb, _ = slide.thumbnail(max_size=max(1, int(round(max(w0, h0) / scale))))
    h, w = thumb.shape[:2]
    downsample = (w0 / w, h0 / h)
    mask_mpp = slide.mpp * downsample[0] if slide.has_mpp else None
    mask, threshold = tissue_mask_from_rgb(thumb, mask_mpp, cfg)
    polygons = mask_to_polygons(mask, downsample)
    log.debug("%s: tissue %.1f%% at threshold %.3f", slide.name, 100 * mask.mean(), threshold)
    return TissueMask(mask, downsample, mask_mpp, polygons, threshold)


def config_dict(cfg: TissueConfig) -> dict[str, Any]:
    return asdict(cfg)


def union_area(polygons: list[Polygon]) -> float:
    return float(unary_union(polygons).area) if polygons else 0.0
