"""Per-cell and per-patch features from instance labels.

Per cell: level-0 centroid, area (µm²), perimeter (µm), eccentricity, solidity, and the mean
haematoxylin and eosin optical densities under the nucleus (Ruifrok-Johnston colour
deconvolution, ``skimage.color.rgb2hed``). Optionally, deep features: any ``(C, h, w)``
feature map (e.g. a patch encoder's last spatial layer) average-pooled under each nucleus.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: per-cell columns, in the order of :func:`cell_features`
CELL_COLUMNS = (
    "label", "x", "y", "area_um2", "perimeter_um", "eccentricity", "solidity",
    "hematoxylin_od", "eosin_od",
)

#: features averaged per patch by :func:`patch_summary`
MEAN_COLUMNS = ("area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od", "eosin_od")


def stain_densities(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin optical density images ``(H, W)`` float32."""
    from skimage.color import rgb2hed

    hed = rgb2hed(rgb)
    return hed[..., 0].astype(np.float32), hed[..., 1].astype(np.float32)


def cell_features(
    labels: np.ndarray,
    rgb: np.ndarray,
    mpp: float,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    keep: np.ndarray | None = None,
    polygons: dict[int, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Features of every labelled nucleus, vectorised over all nuclei at once.

    ``labels`` and ``rgb`` share a pixel grid at ``mpp`` µm/px; a label pixel ``(col, row)``
    is level-0 ``origin + (col, row) * scale``, so centroids come out in level-0 px. ``keep``
    restricts the work to those labels. Area, centroid, eccentricity (from the second
    central moments, as scikit-image) and stain densities come from pixel sums; perimeter
    and solidity from each nucleus outline (``polygons``, label-pixel coordinates, traced
    with :func:`pathmllm.cells.annotations.label_polygons` when not given).
    Returns one array per name in :data:`CELL_COLUMNS`, each of length ``n_cells``.
    """
    import shapely

    from pathmllm.cells.annotations import label_polygons

    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in size")
    if keep is not None:
        labels = np.where(np.isin(labels, keep), labels, 0)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return {c: np.zeros(0, dtype=np.int64 if c == "label" else np.float64) for c in CELL_COLUMNS}
    h_od, e_od = stain_densities(rgb)
    mask = labels > 0
    idx = np.searchsorted(ids, labels[mask])
    rows, cols = np.nonzero(mask)
    n = len(ids)

    def total(w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(idx, weights=w, minlength=n).astype(np.float64)

    area = total()
    r_mean, c_mean = total(rows) / area, total(cols) / area
    dr, dc = rows - r_mean[idx], cols - c_mean[idx]
    mu_rr, mu_cc, mu_rc = total(dr * dr) / area, total(dc * dc) / area, total(dr * dc) / area
    half_trace = (mu_rr + mu_cc) / 2
    root = np.sqrt(np.maximum(((mu_rr - mu_cc) / 2) ** 2 + mu_rc**2, 0))
    l1, l2 = half_trace + root, half_trace - root
    eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, 1)), 0.0)
    polys = polygons if polygons is not None else label_polygons(labels)
    geoms = np.array([polys.get(int(i)) for i in ids], dtype=object)
    have = np.array([g is not None for g in geoms])
    perimeter = np.zeros(n)
    solidity = np.ones(n)
    if have.any():
        g = geoms[have]
        perimeter[have] = shapely.length(g)
        hull = shapely.area(shapely.convex_hull(g))
        solidity[have] = np.clip(shapely.area(g) / np.where(hull > 0, hull, 1), 0, 1)
    return {
        "label": ids.astype(np.int64),
        "x": origin[0] + (c_mean + 0.5) * scale,
        "y": origin[1] + (r_mean + 0.5) * scale,
        "area_um2": area * mpp * mpp,
        "perimeter_um": perimeter * mpp,
        "eccentricity": eccentricity,
        "solidity": solidity,
        "hematoxylin_od": total(h_od[mask]) / area,
        "eosin_od": total(e_od[mask]) / area,
    }


def centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(label ids, centroid rows, centroid cols)`` of every label, in pixel-centre coordinates."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return ids, np.zeros(0), np.zeros(0)
    from scipy import ndimage as ndi

    com = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids), dtype=np.float64).reshape(-1, 2)
    return ids, com[:, 0], com[:, 1]


def pool_feature_map(feature_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average a ``(C, h, w)`` feature map under each nucleus of ``labels`` ``(H, W)``.

    Each label pixel votes for the feature-map cell it falls in, so a nucleus covering
    parts of several cells gets their area-weighted mean. Returns ``(n_labels, C)`` rows in
    increasing label order (only labels present in ``labels``).
    """
    c, h, w = feature_map.shape
    hh, ww = labels.shape
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros((0, c), dtype=np.float32)
    rows = np.minimum((np.arange(hh) * h) // hh, h - 1)
    cols = np.minimum((np.arange(ww) * w) // ww, w - 1)
    cell_index = (rows[:, None] * w + cols[None, :]).ravel()
    lab = labels.ravel()
    mask = lab > 0
    # (label, cell) pixel counts -> weights
    lookup = np.searchsorted(ids, lab[mask])
    counts = np.zeros((len(ids), h * w), dtype=np.float64)
    np.add.at(counts, (lookup, cell_index[mask]), 1.0)
    counts /= counts.sum(axis=1, keepdims=True)
    flat = feature_map.reshape(c, h * w).astype(np.float64)
    return (counts @ flat.T).astype(np.float32)


def patch_summary(
    cells: dict[str, np.ndarray], patch_index: np.ndarray, n_patches: int, patch_area_mm2: float,
    tissue_fraction: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per patch: cell count, density per mm² (of patch, and of tissue), mean cell features."""
    counts = np.bincount(patch_index, minlength=n_patches).astype(np.int64)
    out: dict[str, np.ndarray] = {
        "patch_index": np.arange(n_patches, dtype=np.int64),
        "n_cells": counts,
        "density_per_mm2": counts / patch_area_mm2,
    }
    if tissue_fraction is not None:
        tissue_mm2 = np.maximum(tissue_fraction.astype(np.float64), 1e-6) * patch_area_mm2
        out["density_per_tissue_mm2"] = counts / tissue_mm2
    for col in MEAN_COLUMNS:
        sums = np.bincount(patch_index, weights=cells[col], minlength=n_patches)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"mean_{col}"] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out
