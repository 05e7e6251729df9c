"""The default nucleus segmenter: colour deconvolution + marker-controlled watershed, no weights.

Every size is in µm or µm² and converted to pixels with the ``mpp`` given to
:meth:`WatershedSegmenter.segment`, so one configuration serves 20x (0.5 µm/px) and
40x (0.25 µm/px) images alike. The steps (``docs/cells-watershed.md`` has the details and
the measured MoNuSeg figures):

1. **Haematoxylin**: Ruifrok & Johnston colour deconvolution (``skimage.color.rgb2hed``'s
   matrix), expressed as a base-10 optical density, smoothed by a Gaussian of
   ``smooth_sigma_um``.
2. **Foreground**: pixels above Otsu's threshold on that channel (never below
   ``min_haematoxylin_od``) *and* above their local mean (Gaussian of ``local_sigma_um``),
   which keeps nuclei apart where the cytoplasm is also blue. A flat image (Otsu's two
   classes closer than ``min_contrast_od`` in haematoxylin or ``min_contrast_grey`` in
   brightness) has no nuclei.
3. **Clean-up**: binary opening (``opening_radius_um``), holes up to ``max_hole_area_um2``
   filled (pale vesicular nuclei), specks below ``min_area_um2`` removed.
4. **Seed map** (in µm): the smoothed distance to the background plus the scale-normalised
   Laplacian of Gaussian (``blob_sigma_um``) of the haematoxylin channel, the latter weighted
   by ``blob_sigma_um / shape_weight``. The blob term finds nuclei in clumps where the mask
   is one piece; the distance term keeps one elongated nucleus from being cut in two.
   Seeds are its local maxima at least ``min_seed_distance_um`` apart.
5. **Watershed** of the negated seed map from the seeds inside the foreground; touching
   regions whose dividing dip is shallower than ``min_prominence_um`` are merged (the
   h-maxima criterion); objects outside ``[min_area_um2, max_area_um2]`` are dropped and the
   labels renumbered 1..N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from pathmllm.cells.base import SEGMENTERS, NucleusSegmenter, check_rgb

__all__ = ["WatershedConfig", "WatershedSegmenter", "haematoxylin_od"]


def _h_lut() -> np.ndarray:
    """``(256, 3)`` table: the haematoxylin contribution of each channel value, in base-10 OD.

    Identical to ``skimage.color.rgb2hed(rgb)[..., 0] * 6`` (rgb2hed divides the natural-log
    optical density by ``ln(1e6)``; times ``log10(1e6) = 6`` makes it a base-10 OD), but a
    table lookup instead of a logarithm per pixel.
    """
    from skimage.color import hed_from_rgb

    v = np.maximum(np.arange(256) / 255.0, 1e-6)
    od = np.log(v) / np.log(1e-6)  # rgb2hed's scaling
    return (od[:, None] * hed_from_rgb[:, 0][None, :]) * 6.0


_H_LUT: np.ndarray | None = None


def haematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (base 10, >= 0) of an RGB uint8 image, ``(H, W)`` float32."""
    global _H_LUT
    if _H_LUT is None:
        _H_LUT = _h_lut()
    lut = _H_LUT
    h = lut[rgb[..., 0], 0] + lut[rgb[..., 1], 1] + lut[rgb[..., 2], 2]
    return np.maximum(h, 0.0).astype(np.float32)


@dataclass
class WatershedConfig:
    """Parameters of :class:`WatershedSegmenter`; lengths in µm, areas in µm²."""

    smooth_sigma_um: float = 0.5
    """Gaussian sigma applied to the haematoxylin channel before thresholding (µm)."""

    min_haematoxylin_od: float = 0.12
    """Floor on the foreground threshold, in base-10 haematoxylin optical density: Otsu's
    threshold is never taken below it, so a near-white patch gives no nuclei."""

    min_contrast_od: float = 0.08
    """Least difference between the mean haematoxylin OD of Otsu's two classes; below it the
    image is flat (blank glass, a uniform non-H&E colour) and the result is empty."""

    min_contrast_grey: float = 10.0
    """Least difference in mean brightness (grey levels, 0-255) between Otsu's two classes;
    guards against optical density noise of near-black channels (e.g. pure green, black)."""

    threshold_scale: float = 1.0
    """Multiplier on Otsu's threshold (above 1: stricter foreground, smaller nuclei)."""

    local_sigma_um: float = 3.0
    """Gaussian sigma (µm) of the local mean a foreground pixel must also exceed; 0 turns the
    local test off. Separates nuclei packed in blue cytoplasm."""

    opening_radius_um: float = 0.5
    """Radius (µm) of the binary opening that removes thin bridges and specks; 0: none."""

    max_hole_area_um2: float = 30.0
    """Holes in the foreground up to this area (µm²) are filled (pale nuclear centres)."""

    min_area_um2: float = 8.0
    """Nuclei (and foreground specks) smaller than this (µm²) are dropped."""

    max_area_um2: float = 400.0
    """Objects larger than this (µm²) are dropped: folds, dark debris, unsplit clumps."""

    blob_sigma_um: float = 2.0
    """Scale (µm) of the Laplacian-of-Gaussian blob detector; about nucleus radius / √2."""

    distance_sigma_um: float = 1.0
    """Gaussian sigma (µm) smoothing the distance-to-background map before it is used."""

    shape_weight: float = 1.5
    """Weight of shape against intensity in the seed map: the map is the distance to the
    background (µm) plus ``blob_sigma_um / shape_weight`` times the blob response (in units
    of the threshold); 0: intensity blobs only (``blob_sigma_um`` times the response)."""

    min_seed_distance_um: float = 2.0
    """Least distance (µm) between two seeds; larger values merge more."""

    min_seed_height_um: float = 0.0
    """Least value of the seed map (µm) at a seed; raise it to drop faint or thin seeds."""

    min_prominence_um: float = 0.1
    """Two touching regions are merged when the seed map between them dips less than this
    (µm) below the lower region's peak: the h of h-maxima, applied after the watershed."""

    compactness: float = 0.0
    """``skimage.segmentation.watershed`` compactness (0: classic watershed; higher: more
    regular, Voronoi-like regions)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"WatershedConfig.{f.name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"WatershedConfig.{f.name} must be >= 0, got {value}")
        for name in ("blob_sigma_um", "threshold_scale", "min_area_um2"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WatershedConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_area_um2 <= self.min_area_um2:
            raise ValueError(
                f"WatershedConfig.max_area_um2 ({self.max_area_um2}) must exceed "
                f"min_area_um2 ({self.min_area_um2})"
            )


def _px(um: float, mpp: float) -> float:
    return um / mpp


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


@SEGMENTERS.register(
    "watershed",
    needs_weights=False,
    description=(
        "Colour deconvolution (haematoxylin) + Otsu/local threshold + LoG/distance seeded "
        "watershed; sizes in µm, no weights, CPU only"
    ),
)
class WatershedSegmenter(NucleusSegmenter):
    """Classical nucleus segmentation; ``WatershedSegmenter(min_area_um2=10)`` overrides a field.

    >>> seg = WatershedSegmenter()
    >>> int(seg.segment(np.full((64, 64, 3), 245, np.uint8), mpp=0.5).max())
    0
    """

    name = "watershed"

    def __init__(self, config: WatershedConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = WatershedConfig(**overrides)
        elif overrides:
            config = WatershedConfig(**{**asdict(config), **overrides})
        self.config = config

    def __repr__(self) -> str:
        return f"WatershedSegmenter({self.config})"

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        rgb = check_rgb(rgb)
        try:
            mpp_f = float(mpp)
        except (TypeError, ValueError):
            mpp_f = float("nan")
        if isinstance(mpp, bool) or not np.isfinite(mpp_f) or mpp_f <= 0:
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
        mpp = mpp_f
        empty = np.zeros(rgb.shape[:2], dtype=np.int32)
        if min(rgb.shape[:2]) < 3:
            return empty
        c = self.config
        px2 = mpp * mpp

        # 1. haematoxylin OD, smoothed
        h = haematoxylin_od(rgb)
        s = ndi.gaussian_filter(h, _px(c.smooth_sigma_um, mpp)) if c.smooth_sigma_um > 0 else h

        # 2. foreground: Otsu (floored), contrast guard, local-mean test
        t = self._threshold(s, rgb)
        if t is None:
            return empty
        fg = s > t
        if c.local_sigma_um > 0:
            fg &= s > ndi.gaussian_filter(s, _px(c.local_sigma_um, mpp))

        # 3. clean-up
        if c.opening_radius_um > 0:
            r = max(1, int(round(_px(c.opening_radius_um, mpp))))
            fg = ndi.binary_opening(fg, _disk(r))
        if c.max_hole_area_um2 > 0:
            holes = ndi.binary_fill_holes(fg) & ~fg
            hl, n = ndi.label(holes)
            if n:
                small = np.bincount(hl.ravel()) <= c.max_hole_area_um2 / px2
                small[0] = False
                fg |= small[hl]
        comp, n = ndi.label(fg)
        if n == 0:
            return empty
        sizes = np.bincount(comp.ravel())
        tiny = sizes < c.min_area_um2 / px2
        tiny[0] = True
        fg = ~tiny[comp]
        comp[~fg] = 0
        if not fg.any():
            return empty

        # 4. seed map, in µm: distance to the background + scaled LoG response; its maxima
        blob_px = _px(c.blob_sigma_um, mpp)
        log_response = -ndi.gaussian_laplace(h, blob_px) * (blob_px * blob_px) / t
        if c.shape_weight > 0:
            dist = ndi.distance_transform_edt(fg) * mpp
            if c.distance_sigma_um > 0:
                dist = ndi.gaussian_filter(dist, _px(c.distance_sigma_um, mpp))
            blob = dist + (c.blob_sigma_um / c.shape_weight) * log_response
        else:
            blob = c.blob_sigma_um * log_response
        markers = self._seeds(blob, fg, comp, mpp)

        # 5. watershed, merge of shallow splits, size limits, renumbering
        from skimage.segmentation import watershed

        labels = watershed(-blob, markers, mask=fg, compactness=c.compactness)
        if c.min_prominence_um > 0:
            labels = _merge_shallow(labels, blob, c.min_prominence_um)
        areas = np.bincount(labels.ravel())
        bad = (areas < c.min_area_um2 / px2) | (areas > c.max_area_um2 / px2)
        bad[0] = True
        keep = np.flatnonzero(~bad)
        lut = np.zeros(len(areas), dtype=np.int32)
        lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        return lut[labels]

    def _threshold(self, s: np.ndarray, rgb: np.ndarray) -> float | None:
        """Otsu's threshold on ``s`` floored at ``min_haematoxylin_od``; ``None`` when the image
        is flat (in haematoxylin or in brightness) or has no haematoxylin at all."""
        from skimage.filters import threshold_otsu

        c = self.config
        if float(s.max()) <= c.min_haematoxylin_od or float(s.max() - s.min()) < c.min_contrast_od:
            return None
        t = float(threshold_otsu(s))
        above = s > t
        if not above.any() or above.all():
            return None
        if float(s[above].mean() - s[~above].mean()) < c.min_contrast_od:
            return None
        grey = rgb.mean(axis=2, dtype=np.float32)
        if float(grey[~above].mean() - grey[above].mean()) < c.min_contrast_grey:
            return None
        return max(t * c.threshold_scale, c.min_haematoxylin_od)

    def _seeds(self, blob: np.ndarray, fg: np.ndarray, comp: np.ndarray, mpp: float) -> np.ndarray:
        """Marker image: the maxima of ``blob`` over a disc of radius ``min_seed_distance_um``
        (inside the foreground), and at least one per foreground component."""
        c = self.config
        r = max(1, int(round(_px(c.min_seed_distance_um, mpp))))
        masked = np.where(fg, blob, -np.inf)
        peaks = fg & (masked >= ndi.maximum_filter(masked, footprint=_disk(r), mode="nearest"))
        if c.min_seed_height_um > 0:
            peaks &= blob >= c.min_seed_height_um
        # a flat top gives several adjacent maximal pixels: one seed per connected plateau
        markers, n = ndi.label(peaks, structure=np.ones((3, 3), bool))
        # a component without a seed (possible with min_seed_height_um) still gets one
        seeded = np.bincount(comp.ravel()) == 0  # labels emptied by the size filter need none
        seeded[comp[markers > 0]] = True
        seeded[0] = True
        if not seeded.all():
            boxes = ndi.find_objects(comp)
            for k, lab in enumerate(np.flatnonzero(~seeded), start=n + 1):
                box = boxes[lab - 1]
                sub = np.where(comp[box] == lab, blob[box], -np.inf)
                y, x = np.unravel_index(int(np.argmax(sub)), sub.shape)
                markers[box][y, x] = k
        return markers


def _merge_shallow(labels: np.ndarray, height: np.ndarray, h: float) -> np.ndarray:
    """Merge adjacent regions of ``labels`` separated by a dip shallower than ``h`` in ``height``.

    The saddle between two touching regions is the highest ``min(height[p], height[q])`` over
    neighbouring pixels ``p``, ``q`` on either side of their border. Borders are visited from
    the highest saddle down (as a flooding from the top would meet them); the region with the
    lower peak is absorbed when its peak rises less than ``h`` above the saddle. This is the
    h-maxima criterion evaluated on watershed regions, at a fraction of h-maxima's cost.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    keys, saddles = [], []
    for a, b, ha, hb in (
        (labels[:, :-1], labels[:, 1:], height[:, :-1], height[:, 1:]),
        (labels[:-1, :], labels[1:, :], height[:-1, :], height[1:, :]),
    ):
        border = (a != b) & (a > 0) & (b > 0)
        if border.any():
            la, lb = a[border].astype(np.int64), b[border].astype(np.int64)
            keys.append(np.minimum(la, lb) * (n + 1) + np.maximum(la, lb))
            saddles.append(np.minimum(ha[border], hb[border]))
    if not keys:
        return labels
    key = np.concatenate(keys)
    saddle = np.concatenate(saddles)
    uniq, inv = np.unique(key, return_inverse=True)
    best = np.full(len(uniq), -np.inf)
    np.maximum.at(best, inv, saddle)
    peak = np.full(n + 1, -np.inf)
    inside = labels > 0
    np.maximum.at(peak, labels[inside], height[inside])  # per-region maximum, no sort
    parent = np.arange(n + 1)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merged = False
    for e in np.argsort(-best, kind="stable"):
        ra, rb = find(int(uniq[e] // (n + 1))), find(int(uniq[e] % (n + 1)))
        if ra == rb:
            continue
        low, high = (ra, rb) if peak[ra] < peak[rb] else (rb, ra)
        if peak[low] - best[e] < h:
            parent[low] = high
            merged = True
    if not merged:
        return labels
    roots = np.array([find(i) for i in range(n + 1)])
    return roots[labels]
