"""Patch grids at a target µm/px, grouped into regions of k x k patches.

Coordinates are level-0 top-left corners on a lattice that starts at (0, 0) and steps by
``patch_size_level0 - overlap_level0``, as TRIDENT writes them and TITAN expects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pathmllm.wsi.errors import SlideTooSmallError
from pathmllm.wsi.resolution import DEFAULT_MPP_TOLERANCE, ReadPlan
from pathmllm.wsi.tissue import TissueMask


@dataclass
class TilingConfig:
    """Where patches go. Sizes are in pixels at ``target_mpp``."""

    target_mpp: float = 0.5
    """µm per pixel of the patches (0.5 ≈ 20x, 0.25 ≈ 40x)."""
    patch_size: int = 256
    """Patch side in pixels at target_mpp."""
    overlap: int = 0
    """Overlap between neighbouring patches, pixels at target_mpp."""
    min_tissue: float = 0.25
    """Keep a patch when at least this fraction of it is tissue (0 keeps any patch touching tissue)."""
    region_size: int = 16
    """Regions are region_size x region_size patches (16 x 256 px = 4096 px, as MLLM-HWSI)."""
    mpp_tolerance: float = DEFAULT_MPP_TOLERANCE
    """Relative distance within which the downsample snaps to a pyramid level or a whole number."""

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target µm/px must be positive, got {self.target_mpp}")
        if self.patch_size < 8:
            raise ValueError(f"patch size must be at least 8 px, got {self.patch_size}")
        if not 0 <= self.overlap < self.patch_size:
            raise ValueError(f"overlap must be in [0, patch_size), got {self.overlap}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue is a fraction in [0, 1], got {self.min_tissue}")
        if self.region_size < 1:
            raise ValueError(f"region size must be at least 1 patch, got {self.region_size}")

    @property
    def setting_name(self) -> str:
        """Folder name of this setting inside a slide's store, e.g. ``0.5mpp_256px``."""
        name = f"{self.target_mpp:g}mpp_{self.patch_size}px"
        return name + (f"_{self.overlap}px_overlap" if self.overlap else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PatchGrid:
    """Patches (row-major) and the regions they belong to.

    Per patch, arrays of length ``N``: ``coords`` (N, 2) int64 level-0 (x, y);
    ``tissue_fraction`` (N,) float32; ``grid_rc`` (N, 2) int32 row/col on the lattice;
    ``region_index`` (N,) int32 into the region table; ``region_rc`` (N, 2) int32 row/col
    inside the region. Per region, length ``R``: ``regions`` columns of the region table.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    grid_rc: np.ndarray
    region_index: np.ndarray
    region_rc: np.ndarray
    regions: dict[str, np.ndarray]
    plan: ReadPlan
    step_level0: int
    overlap_level0: int
    region_size: int

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def n_regions(self) -> int:
        return len(self.regions["region_index"])


def tissue_fractions(tissue: TissueMask, coords: np.ndarray, footprint: int) -> np.ndarray:
    """Fraction of each level-0 square ``[x, x+footprint) x [y, y+footprint)`` covered by tissue.

    Exact area weighting: the summed-area table of a pixel-constant mask is bilinear
    inside each pixel, so interpolating it at fractional corners integrates exactly.
    """
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    m = tissue.mask
    h, w = m.shape
    # integer counts: exact, and half the memory of float64 (int64 only for masks of 2**31 px)
    count = np.int32 if h * w < 2**31 else np.int64
    sat = np.zeros((h + 1, w + 1), dtype=count)
    np.cumsum(m, axis=0, dtype=count, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, dtype=count, out=sat[1:, 1:])
    sx, sy = tissue.downsample

    def at(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        xs = np.clip(xs, 0, w)
        ys = np.clip(ys, 0, h)
        x0 = np.minimum(np.floor(xs).astype(np.int64), w - 1)
        y0 = np.minimum(np.floor(ys).astype(np.int64), h - 1)
        fx, fy = xs - x0, ys - y0
        s00, s01 = sat[y0, x0].astype(np.float64), sat[y0, x0 + 1].astype(np.float64)
        s10, s11 = sat[y0 + 1, x0].astype(np.float64), sat[y0 + 1, x0 + 1].astype(np.float64)
        return (s00 * (1 - fx) * (1 - fy) + s01 * fx * (1 - fy) + s10 * (1 - fx) * fy + s11 * fx * fy)

    x0 = coords[:, 0] / sx
    y0 = coords[:, 1] / sy
    x1 = (coords[:, 0] + footprint) / sx
    y1 = (coords[:, 1] + footprint) / sy
    area = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    full = (footprint / sx) * (footprint / sy)
    return np.clip(area / full, 0.0, 1.0).astype(np.float32)


def check_fits(dimensions: tuple[int, int], plan: ReadPlan, config: TilingConfig, slide_name: str) -> None:
    """Raise :class:`SlideTooSmallError` when not one whole patch fits on the slide."""
    w0, h0 = dimensions
    p0 = plan.patch_size_level0
    if w0 < p0 or h0 < p0:
        raise SlideTooSmallError(
            f"{slide_name}: the slide is {w0}x{h0} px at level 0, smaller than one "
            f"{config.patch_size} px patch at {config.target_mpp:g} µm/px ({p0} px at level 0); "
            "use a smaller --patch-size or a finer --target-mpp"
        )


def make_grid(
    dimensions: tuple[int, int],
    plan: ReadPlan,
    tissue: TissueMask,
    config: TilingConfig,
    slide_name: str = "slide",
) -> PatchGrid:
    """Lay the lattice over the slide, keep patches with enough tissue, group them into regions."""
    check_fits(dimensions, plan, config, slide_name)
    w0, h0 = dimensions
    p0 = plan.patch_size_level0
    ov0 = int(round(config.overlap * plan.downsample))
    step = p0 - ov0
    if step <= 0:
        raise ValueError(f"overlap {config.overlap} leaves no step between patches")
    n_cols, n_rows = math.ceil(w0 / step), math.ceil(h0 / step)
    cols, rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows))  # row-major order
    grid_rc = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int32)
    coords = (grid_rc[:, ::-1].astype(np.int64)) * step
    frac = tissue_fractions(tissue, coords, p0)
    keep = frac >= max(config.min_tissue, 1e-6)  # 1e-6: float noise of the summed-area table
    coords, frac, grid_rc = coords[keep], frac[keep], grid_rc[keep]

    k = config.region_size
    reg_rc_global = grid_rc // k  # (region row, region col) on the region lattice
    region_rc = (grid_rc % k).astype(np.int32)
    n_reg_cols = math.ceil(n_cols / k)
    flat = reg_rc_global[:, 0].astype(np.int64) * n_reg_cols + reg_rc_global[:, 1]
    uniq, region_index = np.unique(flat, return_inverse=True)
    region_index = region_index.astype(np.int32).reshape(-1)
    r_rows, r_cols = (uniq // n_reg_cols).astype(np.int32), (uniq % n_reg_cols).astype(np.int32)
    counts = np.bincount(region_index, minlength=len(uniq)).astype(np.int32)
    frac_sum = np.bincount(region_index, weights=frac, minlength=len(uniq))
    extent = (k - 1) * step + p0
    regions = {
        "region_index": np.arange(len(uniq), dtype=np.int32),
        "region_row": r_rows,
        "region_col": r_cols,
        "x": (r_cols.astype(np.int64) * k * step),
        "y": (r_rows.astype(np.int64) * k * step),
        "width": np.full(len(uniq), extent, dtype=np.int64),
        "height": np.full(len(uniq), extent, dtype=np.int64),
        "n_patches": counts,
        "mean_tissue_fraction": (frac_sum / np.maximum(counts, 1)).astype(np.float32),
    }
    return PatchGrid(
        coords=coords,
        tissue_fraction=frac,
        grid_rc=grid_rc,
        region_index=region_index,
        region_rc=region_rc,
        regions=regions,
        plan=plan,
        step_level0=step,
        overlap_level0=ov0,
        region_size=k,
    )
