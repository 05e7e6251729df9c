"""Patch-coordinate HDF5 files that CLAM and TRIDENT read without conversion (FORMATS.md §1).

``coords`` is int64 ``(N, 2)`` level-0 top-left corners with TRIDENT's full attribute set;
CLAM's attributes are added only when one ``patch_size`` serves both readers (the target
downsample equals a real pyramid level's), otherwise :func:`write_clam_coords` writes a
separate CLAM file for a real level.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathmllm.utils.atomic import atomic_path
from pathmllm.wsi.resolution import ReadPlan, nominal_magnification

#: extra per-patch datasets pathmllm keeps beside ``coords`` (CLAM and TRIDENT ignore them)
PATCH_INFO = "patch_info"


def _mag_value(m: float) -> int | float:
    return int(m) if float(m).is_integer() else float(m)


def trident_attrs(
    plan: ReadPlan,
    level0_mpp: float,
    dimensions: tuple[int, int],
    overlap: int,
    name: str,
    savetodir: str,
) -> dict[str, Any]:
    """TRIDENT's coords attributes, with magnifications chosen so that TRIDENT's own
    ``round(patch_size * level0_mag / target_mag)`` equals ``patch_size_level0``."""
    level0_mag = nominal_magnification(level0_mpp)
    target_mag = level0_mag * plan.patch_size / plan.patch_size_level0
    return {
        "patch_size": np.int64(plan.patch_size),
        "patch_size_level0": np.int64(plan.patch_size_level0),
        "level0_magnification": _mag_value(level0_mag),
        "target_magnification": float(target_mag),
        "overlap": np.int64(overlap),
        "name": str(name),
        "savetodir": str(savetodir),
        "level0_width": np.int64(dimensions[0]),
        "level0_height": np.int64(dimensions[1]),
    }


def clam_level(
    plan: ReadPlan, level_downsamples: list[float]
) -> tuple[int, int] | None:
    """``(patch_level, patch_size)`` if TRIDENT's ``patch_size`` read at a real level gives
    the same level-0 footprint (so one file serves both readers), else ``None``."""
    for level, ds in enumerate(level_downsamples):
        if abs(plan.patch_size * ds - plan.patch_size_level0) < 1.0:
            return level, plan.patch_size
    return None


def clam_attrs(
    patch_level: int,
    patch_size: int,
    level_dimensions: list[tuple[int, int]],
    level_downsamples: list[float],
    save_path: str,
) -> dict[str, Any]:
    ds = float(level_downsamples[patch_level])
    dim = tuple(int(v) for v in level_dimensions[patch_level])
    return {
        "patch_level": np.int64(patch_level),
        "patch_size": np.int64(patch_size),
        "downsample": np.array([ds, ds], dtype=np.float64),
        "downsampled_level_dim": np.array(dim, dtype=np.int64),
        "level_dim": np.array(dim, dtype=np.int64),
        "save_path": str(save_path),
    }


def write_coords_h5(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    attrs: dict[str, Any],
    patch_info: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``coords`` (validated: int64 (N, 2), non-negative) with ``attrs``, atomically."""
    coords = np.asarray(coords)
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2), got {coords.shape}")
    if not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(f"coords must be integers (level-0 px), got {coords.dtype}")
    if len(coords) and coords.min() < 0:
        raise ValueError("coords must be non-negative level-0 pixels")
    w, h = attrs.get("level0_width"), attrs.get("level0_height")
    if w is not None and len(coords) and (coords[:, 0].max() >= w or coords[:, 1].max() >= h):
        raise ValueError(f"coords fall outside the {w}x{h} level-0 image")
    coords = coords.astype(np.int64)
    chunk_rows = int(min(max(len(coords), 1), 4096))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("coords", data=coords, maxshape=(None, 2), chunks=(chunk_rows, 2))
            for k, v in attrs.items():
                d.attrs[k] = v
            if patch_info:
                g = f.create_group(PATCH_INFO)
                for k, v in patch_info.items():
                    if len(v) != len(coords):
                        raise ValueError(f"patch_info[{k!r}] has {len(v)} rows, coords {len(coords)}")
                    g.create_dataset(k, data=v)


def read_coords_h5(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(coords, attrs)`` of a coords file (ours, CLAM's or TRIDENT's)."""
    with h5py.File(path, "r") as f:
        coords = f["coords"][:]
        attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
    return coords, attrs


def read_patch_info(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        if PATCH_INFO not in f:
            return {}
        return {k: f[PATCH_INFO][k][:] for k in f[PATCH_INFO]}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def trident_dir_name(attrs: dict[str, Any]) -> str:
    """TRIDENT's coords folder: ``<mag:g>x_<patch_size>px_<overlap>px_overlap``."""
    return f"{float(attrs['target_magnification']):g}x_{int(attrs['patch_size'])}px_{int(attrs['overlap'])}px_overlap"


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy across file systems), replacing ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
