"""Resolution in µm/px: sanity checks, magnification, and which level to read for a target µm/px."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: µm/px a microscope slide scan can plausibly have (0.05 = 200x, 16 = a low-power overview)
PLAUSIBLE_MPP = (0.05, 16.0)

#: TRIDENT's µm/px -> nominal objective magnification table (FORMATS.md §1.2)
_MAG_TABLE = ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5))

#: a target downsample within this relative distance of a level's (or a whole number) is snapped to it
DEFAULT_MPP_TOLERANCE = 0.02


def check_mpp(mpp_xy: tuple[float, float], source: str) -> str | None:
    """Return a problem description if ``mpp_xy`` cannot be a slide scan's, else ``None``."""
    mx, my = mpp_xy
    if not (math.isfinite(mx) and math.isfinite(my)) or mx <= 0 or my <= 0:
        return f"{source} gives {mx:g} x {my:g} µm/px, which is not a positive number"
    lo, hi = PLAUSIBLE_MPP
    for v in (mx, my):
        if not lo <= v <= hi:
            return (
                f"{source} gives {v:g} µm/px, outside the {lo:g}-{hi:g} µm/px of any slide scanner "
                "(often a 72/96 dpi default written by the software, not the microscope)"
            )
    if abs(mx - my) / max(mx, my) > 0.1:
        return f"{source} gives non-square pixels ({mx:g} x {my:g} µm/px)"
    return None


def nominal_magnification(mpp: float) -> float:
    """TRIDENT's nominal objective power for a level-0 µm/px (0.25 -> 40, 0.5 -> 20)."""
    for limit, mag in _MAG_TABLE:
        if mpp < limit:
            return float(mag)
    return round(10.0 / mpp, 4)


@dataclass(frozen=True)
class ReadPlan:
    """How to read one ``patch_size`` patch at ``target_mpp`` from a slide.

    ``downsample`` is level-0 px per output px after snapping; ``patch_size_level0`` the
    patch's level-0 footprint; ``read_size`` the side read at ``level`` before resizing.
    """

    target_mpp: float
    effective_mpp: float
    downsample: float
    level: int
    level_downsample: float
    read_size: int
    patch_size: int
    patch_size_level0: int

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.patch_size


def snap_downsample(exact: float, level_downsamples: list[float], tolerance: float) -> float:
    """Snap ``exact`` to a level's downsample or a whole number when within ``tolerance``.

    A 0.499 µm/px scan read at 0.5 µm/px is read 1:1 (no resampling blur), and a
    0.2527 µm/px scan read at 0.5 µm/px uses the 2x footprint that the field's
    magnification-based tools (TRIDENT, CLAM) use.
    """
    candidates = list(level_downsamples)
    if exact >= 1:
        candidates.append(float(round(exact)))
    best = min(candidates, key=lambda c: abs(c - exact) / exact, default=None)
    if best is not None and best > 0 and abs(best - exact) / exact <= tolerance:
        return float(best)
    return exact


def best_level(level_downsamples: list[float], downsample: float) -> int:
    """The coarsest level at least as fine as ``downsample`` (level 0 if none is finer)."""
    chosen = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= downsample * (1 + 1e-6):
            if ds >= level_downsamples[chosen]:
                chosen = i
    return chosen


def plan_read(
    level0_mpp: float,
    level_downsamples: list[float],
    target_mpp: float,
    patch_size: int,
    tolerance: float = DEFAULT_MPP_TOLERANCE,
) -> ReadPlan:
    """Decide level, read size and level-0 footprint for patches of ``patch_size`` at ``target_mpp``."""
    if target_mpp <= 0:
        raise ValueError(f"target µm/px must be positive, got {target_mpp}")
    if patch_size <= 0:
        raise ValueError(f"patch size must be positive, got {patch_size}")
    exact = target_mpp / level0_mpp
    ds = snap_downsample(exact, level_downsamples, tolerance)
    level = best_level(level_downsamples, ds)
    footprint = max(1, int(round(patch_size * ds)))
    read_size = max(1, int(round(footprint / level_downsamples[level])))
    return ReadPlan(
        target_mpp=target_mpp,
        effective_mpp=level0_mpp * footprint / patch_size,
        downsample=ds,
        level=level,
        level_downsample=level_downsamples[level],
        read_size=read_size,
        patch_size=patch_size,
        patch_size_level0=footprint,
    )
