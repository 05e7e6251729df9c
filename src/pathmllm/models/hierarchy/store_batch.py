"""Build :class:`~pathmllm.models.hierarchy.HierarchyBatch` inputs from slide stores.

A slide store (``<out>/<slide>/<setting>/``, see :mod:`pathmllm.wsi.store`) needs three stages:

* ``patches`` (``pathmllm slide tile``): ``coords.h5`` with, per patch, ``region_index`` and
  ``region_rc`` (row, col inside its region);
* ``cells`` (``pathmllm slide cells``): ``cells.parquet`` with one row per nucleus and its
  ``patch_index`` (row of ``coords.h5``);
* ``features_<encoder>`` (``pathmllm slide features -e ENC``): ``features_<encoder>.h5`` whose
  ``features`` rows align with ``coords.h5``.

:func:`load_slide_hierarchy` turns one store into a :class:`SlideHierarchy` (unpadded, NumPy,
one entry per kept region) and :func:`collate_hierarchy` pads several into a batch.

Conventions:

* **Patch slots** are the tissue patches of a region only (not all ``region_size²`` grid slots),
  in ``coords.h5`` order; ``patch_positions`` is their (row, col) inside the region grid
  (``region_rc``), ``region_positions`` the region's (row, col) on the slide's region lattice.
* **Cell features** are :data:`DEFAULT_CELL_COLUMNS` (``area_um2, perimeter_um, eccentricity,
  solidity, hematoxylin_od, eosin_od``, the six numeric per-cell measurements of the cells
  stage), **raw** (µm², µm, unitless, optical density) unless ``cell_mean``/``cell_std`` are
  given, then ``(x - mean) / std``. Area and perimeter are orders of magnitude larger than
  the others: pass dataset statistics for training.
* **Cells beyond** ``max_cells_per_patch``: the largest nuclei (by ``area_um2``; ties by
  ``cell_id``) are kept, then put back in ``cell_id`` order. Deterministic.
* **Limits**: with more than ``max_regions`` regions, :func:`select_regions` picks them from
  the mean patch feature of each region; with more than ``max_patches_per_region`` patches,
  :func:`select_patches` picks them from the patch features. Both use ``question_vec`` when
  given (it must live in the patch-feature space). Kept regions and patches are returned in
  ascending store order, not selection order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CELL_COLUMNS",
    "SlideHierarchy",
    "StoreStageMissingError",
    "collate_hierarchy",
    "load_slide_hierarchy",
]

#: the six numeric per-cell measurements written by the cells stage (``pathmllm.cells.features.MEAN_COLUMNS``)
DEFAULT_CELL_COLUMNS: tuple[str, ...] = (
    "area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od", "eosin_od",
)


class StoreStageMissingError(FileNotFoundError):
    """A slide store lacks a stage the hierarchy needs; the message names the command to run."""


@dataclass
class SlideHierarchy:
    """One slide's hierarchy inputs, unpadded (``R`` kept regions; lists have one entry per region)."""

    slide_name: str
    store: str
    encoder: str
    region_ids: np.ndarray
    """``(R,)`` int64 ``region_index`` of each kept region (row of ``regions.parquet``)."""
    region_positions: np.ndarray
    """``(R, 2)`` int64 (row, col) of each region on the slide's region lattice."""
    patch_indices: list[np.ndarray]
    """Per region ``(P_r,)`` int64 rows of ``coords.h5`` (the patch ids, for evidence)."""
    patch_coords: list[np.ndarray]
    """Per region ``(P_r, 2)`` int64 level-0 (x, y) of each patch's top-left corner."""
    patch_positions: list[np.ndarray]
    """Per region ``(P_r, 2)`` int64 (row, col) of each patch inside the region grid."""
    patch_features: list[np.ndarray]
    """Per region ``(P_r, Fp)`` float32 patch-encoder features."""
    cell_features: list[list[np.ndarray]]
    """Per region, per patch ``(C_p, F)`` float32 cell features (``C_p <= max_cells_per_patch``)."""
    cell_ids: list[list[np.ndarray]]
    """Per region, per patch ``(C_p,)`` int64 ``cell_id`` of the kept cells."""
    cell_columns: tuple[str, ...]
    n_cells_total: np.ndarray
    """``(N,)`` int64 cells per patch before the cap, for every patch of the store."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """``coords.h5`` attributes (``patch_size``, ``target_mpp``, ``patch_size_level0`` ...)."""

    @property
    def n_regions(self) -> int:
        return len(self.region_ids)

    @property
    def n_patches(self) -> list[int]:
        return [len(p) for p in self.patch_indices]


def _missing(store: Any, stage: str, command: str) -> StoreStageMissingError:
    return StoreStageMissingError(f"{store.root}: {stage} stage missing: run `{command}`")


def load_slide_hierarchy(
    store_dir: str | os.PathLike[str],
    encoder: str,
    *,
    cell_columns: Sequence[str] | None = None,
    max_cells_per_patch: int = 32,
    max_regions: int | None = None,
    max_patches_per_region: int | None = None,
    question_vec: Any | None = None,
    relevance_weight: float = 0.5,
    selection_map: Any | None = None,
    cell_mean: Any | None = None,
    cell_std: Any | None = None,
) -> SlideHierarchy:
    """Read one slide store (``<out>/<slide>/<setting>``) into a :class:`SlideHierarchy`.

    Args:
        store_dir: the store folder.
        encoder: patch encoder name as given to ``pathmllm slide features -e``.
        cell_columns: per-cell columns of ``cells.parquet`` (default :data:`DEFAULT_CELL_COLUMNS`).
        max_cells_per_patch: keep at most this many cells per patch (largest ``area_um2``).
        max_regions: keep at most this many regions (:func:`select_regions`); None keeps all.
        max_patches_per_region: keep at most this many patches per region (:func:`select_patches`).
        question_vec: optional ``(Fp,)`` question embedding in the patch-feature space.
        relevance_weight: weight of relevance vs diversity in selection (with a question).
        selection_map: optional callable ``(n, Fp) array -> (n, D) array`` mapping patch features
            into the space of ``question_vec`` before selection (e.g. the slide model's patch
            projector, so a question embedded by the model's text tower can rank patches).
        cell_mean, cell_std: optional ``(F,)`` statistics; cell features become ``(x - mean) / std``.

    Raises:
        StoreStageMissingError: a needed stage is missing (the message says which command makes it).
        ValueError: the slide has no tissue patches, or arguments / files disagree.
    """
    import h5py
    import pyarrow.parquet as pq

    from pathmllm.encoders.extract import safe_name
    from pathmllm.models.hierarchy.selection import select_patches, select_regions
    from pathmllm.wsi.store import SlideStore

    root = Path(store_dir)
    if not (root / SlideStore.MANIFEST).exists():
        raise StoreStageMissingError(
            f"{root}: not a slide store (no {SlideStore.MANIFEST}); run `pathmllm slide tile SLIDE --out OUT`"
        )
    store = SlideStore.open(root)
    if max_cells_per_patch < 0:
        raise ValueError(f"max_cells_per_patch must be >= 0, got {max_cells_per_patch}")
    for name, v in (("max_regions", max_regions), ("max_patches_per_region", max_patches_per_region)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {v}")
    columns = tuple(cell_columns) if cell_columns is not None else DEFAULT_CELL_COLUMNS

    if not store.is_done("patches"):
        raise _missing(store, "patches", "pathmllm slide tile SLIDE --out OUT")
    coords, attrs = store.coords()
    info = store.patch_info()
    n = len(coords)
    if n == 0:
        raise ValueError(f"{store.root}: the slide has no tissue patches (the tiling kept none); "
                         "check the tissue detection or lower --min-tissue")
    enc = safe_name(encoder)
    feat_stage = f"features_{enc}"
    if not store.is_done("cells"):
        raise _missing(store, "cells", "pathmllm slide cells SLIDE --out OUT")
    if not store.is_done(feat_stage):
        raise _missing(store, f"{feat_stage} (features)", f"pathmllm slide features SLIDE -e {encoder} --out OUT")

    for key in ("region_index", "region_rc"):
        if key not in info:
            raise ValueError(f"{store.root}: coords.h5 has no patch_info/{key}; re-run `pathmllm slide tile --force`")
    region_index = np.asarray(info["region_index"], dtype=np.int64)
    region_rc = np.asarray(info["region_rc"], dtype=np.int64)

    with h5py.File(store.path(f"{feat_stage}.h5"), "r") as f:
        feats = np.asarray(f["features"][:], dtype=np.float32)
        fcoords = f["coords"][:] if "coords" in f else None
    if feats.shape[0] != n or (fcoords is not None and not np.array_equal(fcoords, coords)):
        raise ValueError(f"{store.root}: {feat_stage}.h5 does not match coords.h5 ({feats.shape[0]} vs {n} patches); "
                         f"re-run `pathmllm slide features SLIDE -e {encoder} --out OUT --force`")

    table = pq.read_table(store.path("cells.parquet"))
    absent = [c for c in (*columns, "patch_index") if c not in table.column_names]
    if absent:
        raise ValueError(f"{store.root}: cells.parquet has no column(s) {absent}; it has {table.column_names}")
    cell_patch = table.column("patch_index").to_numpy().astype(np.int64)
    cell_id = (table.column("cell_id").to_numpy().astype(np.int64) if "cell_id" in table.column_names
               else np.arange(table.num_rows, dtype=np.int64))
    cell_x = (np.stack([table.column(c).to_numpy().astype(np.float32) for c in columns], axis=1)
              if table.num_rows else np.zeros((0, len(columns)), dtype=np.float32))
    if cell_mean is not None or cell_std is not None:
        mean = np.zeros(len(columns), np.float32) if cell_mean is None else np.asarray(cell_mean, np.float32)
        std = np.ones(len(columns), np.float32) if cell_std is None else np.asarray(cell_std, np.float32)
        if mean.shape != (len(columns),) or std.shape != (len(columns),):
            raise ValueError(f"cell_mean / cell_std must have shape ({len(columns)},)")
        cell_x = (cell_x - mean) / np.where(std > 0, std, 1.0)
    size = (table.column("area_um2").to_numpy().astype(np.float64) if "area_um2" in table.column_names
            else np.zeros(table.num_rows))
    # cells grouped by patch; inside a patch, largest first (ties: lower cell_id)
    order = np.lexsort((cell_id, -size, cell_patch))
    n_cells_total = np.bincount(cell_patch, minlength=n).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(n_cells_total)])

    # regions and their patches
    sel = feats if selection_map is None else np.asarray(selection_map(feats), dtype=np.float32)
    if sel.shape[0] != n:
        raise ValueError(f"selection_map returned {sel.shape[0]} rows for {n} patches")
    region_ids = np.unique(region_index)
    members = [np.flatnonzero(region_index == r) for r in region_ids]
    if max_regions is not None and len(region_ids) > max_regions:
        vecs = np.stack([sel[m].mean(0) for m in members])
        keep = np.sort(select_regions(vecs, max_regions, question_vec, relevance_weight))
        region_ids = region_ids[keep]
        members = [members[i] for i in keep]
    if max_patches_per_region is not None:
        members = [
            m if len(m) <= max_patches_per_region
            else m[np.sort(select_patches(sel[m], max_patches_per_region, question_vec, relevance_weight))]
            for m in members
        ]

    reg_pos = _region_positions(store, region_ids, region_index, info, attrs)
    cells_f: list[list[np.ndarray]] = []
    cells_id: list[list[np.ndarray]] = []
    for m in members:
        per_f, per_id = [], []
        for p in m:
            rows = order[starts[p]: starts[p + 1]][:max_cells_per_patch]
            rows = rows[np.argsort(cell_id[rows], kind="stable")]
            per_f.append(cell_x[rows])
            per_id.append(cell_id[rows])
        cells_f.append(per_f)
        cells_id.append(per_id)

    return SlideHierarchy(
        slide_name=store.slide_name,
        store=str(store.root),
        encoder=encoder,
        region_ids=region_ids.astype(np.int64),
        region_positions=reg_pos,
        patch_indices=[m.astype(np.int64) for m in members],
        patch_coords=[coords[m].astype(np.int64) for m in members],
        patch_positions=[region_rc[m] for m in members],
        patch_features=[feats[m] for m in members],
        cell_features=cells_f,
        cell_ids=cells_id,
        cell_columns=columns,
        n_cells_total=n_cells_total,
        attrs=attrs,
    )


def _region_positions(store: Any, region_ids: np.ndarray, region_index: np.ndarray, info: dict[str, np.ndarray],
                      attrs: dict[str, Any]) -> np.ndarray:
    """(row, col) of each region on the region lattice: ``regions.parquet``, else from ``grid_rc``."""
    try:
        reg = store.regions()
        lookup = {int(i): (int(r), int(c)) for i, r, c in zip(reg["region_index"], reg["region_row"], reg["region_col"])}
        return np.array([lookup[int(r)] for r in region_ids], dtype=np.int64).reshape(-1, 2)
    except (FileNotFoundError, KeyError):
        k = int(attrs.get("region_size", 1))
        grid_rc = np.asarray(info["grid_rc"], dtype=np.int64)
        return np.array([grid_rc[np.flatnonzero(region_index == r)[0]] // k for r in region_ids],
                        dtype=np.int64).reshape(-1, 2)


def collate_hierarchy(slides: Sequence[SlideHierarchy]) -> Any:
    """Pad slides to the largest ``R``, ``P``, ``C`` of the list into a ``HierarchyBatch``.

    Float tensors are float32, positions long, masks bool. ``C`` is at least 1 (an all-False
    cell mask) so the cell tensors are never empty.
    """
    import torch

    from pathmllm.models.hierarchy.encoder import HierarchyBatch

    if not slides:
        raise ValueError("collate_hierarchy needs at least one slide")
    fp = {s.patch_features[0].shape[1] for s in slides if s.n_regions}
    fc = {len(s.cell_columns) for s in slides}
    if len(fp) > 1 or len(fc) > 1:
        raise ValueError(f"slides disagree on feature sizes: patch {sorted(fp)}, cell {sorted(fc)}")
    dp, dc = fp.pop(), fc.pop()
    b = len(slides)
    r = max(1, max(s.n_regions for s in slides))
    p = max(1, max((max(s.n_patches, default=0) for s in slides), default=0))
    c = max(1, max((len(x) for s in slides for reg in s.cell_features for x in reg), default=0))
    cell_features = torch.zeros(b, r, p, c, dc, dtype=torch.float32)
    cell_mask = torch.zeros(b, r, p, c, dtype=torch.bool)
    patch_features = torch.zeros(b, r, p, dp, dtype=torch.float32)
    patch_mask = torch.zeros(b, r, p, dtype=torch.bool)
    patch_positions = torch.zeros(b, r, p, 2, dtype=torch.long)
    region_mask = torch.zeros(b, r, dtype=torch.bool)
    region_positions = torch.zeros(b, r, 2, dtype=torch.long)
    for i, s in enumerate(slides):
        for j in range(s.n_regions):
            k = len(s.patch_indices[j])
            region_mask[i, j] = True
            region_positions[i, j] = torch.from_numpy(s.region_positions[j])
            patch_features[i, j, :k] = torch.from_numpy(np.asarray(s.patch_features[j], np.float32))
            patch_mask[i, j, :k] = True
            patch_positions[i, j, :k] = torch.from_numpy(s.patch_positions[j])
            for q, cells in enumerate(s.cell_features[j]):
                if len(cells):
                    cell_features[i, j, q, : len(cells)] = torch.from_numpy(np.asarray(cells, np.float32))
                    cell_mask[i, j, q, : len(cells)] = True
    return HierarchyBatch(
        cell_features=cell_features,
        cell_mask=cell_mask,
        patch_features=patch_features,
        patch_mask=patch_mask,
        patch_positions=patch_positions,
        region_mask=region_mask,
        region_positions=region_positions,
    )
