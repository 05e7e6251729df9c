"""Hierarchy batches built from a real slide store (virtual slide of LC25000 tiles)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared

pytestmark = pytest.mark.data

ENCODER = "handcrafted"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4x4 virtual slide, tiled with 2x2-patch regions, cells segmented, handcrafted features."""
    from pathmllm.cells.slide import segment_slide
    from pathmllm.data.virtual_slides import make_virtual_slide, read_tile_groups
    from pathmllm.encoders.extract import ExtractConfig, extract_slide_features
    from pathmllm.wsi.pipeline import tile_slide
    from pathmllm.wsi.tiling import TilingConfig

    tiles = read_tile_groups(shared("tiles", "lc25000-lung"))[::10]
    tmp = tmp_path_factory.mktemp("store_batch")
    vs = make_virtual_slide(tmp / "v.tiff", [t[0] for t in tiles], [t[1] for t in tiles], "lung_aca",
                            np.random.default_rng(0), grid=(4, 4), background_fraction=0.2)
    tiling = TilingConfig(region_size=2)
    out = tmp / "out"
    res = tile_slide(vs.path, out, tiling)
    segment_slide(vs.path, out, tiling)
    extract_slide_features(vs.path, out, ExtractConfig(encoder=ENCODER, batch_size=16, device="cpu"), tiling)
    return Path(res.store)


def _cells(store: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(store / "cells.parquet")
    return t.column("patch_index").to_numpy(), t.column("area_um2").to_numpy()


def test_full_slide_matches_store(store: Path) -> None:
    from pathmllm.models.hierarchy.store_batch import (
        DEFAULT_CELL_COLUMNS,
        collate_hierarchy,
        load_slide_hierarchy,
    )
    from pathmllm.wsi.store import SlideStore

    s = SlideStore.open(store)
    coords, _ = s.coords()
    info = s.patch_info()
    n_regions = len(np.unique(info["region_index"]))
    assert n_regions >= 2
    cap = 5
    h = load_slide_hierarchy(store, ENCODER, max_cells_per_patch=cap)
    assert h.cell_columns == DEFAULT_CELL_COLUMNS
    assert h.n_regions == n_regions
    assert sum(h.n_patches) == len(coords)
    cell_patch, area = _cells(store)
    counts = np.bincount(cell_patch, minlength=len(coords))
    assert cell_patch.size > 0 and np.array_equal(h.n_cells_total, counts)
    for j, rid in enumerate(h.region_ids):
        idx = h.patch_indices[j]
        assert (info["region_index"][idx] == rid).all()
        assert np.array_equal(h.patch_positions[j], info["region_rc"][idx])
        assert np.array_equal(h.patch_coords[j], coords[idx])
        assert np.array_equal(h.region_positions[j], info["grid_rc"][idx[0]] // 2)
        for q, p in enumerate(idx):
            got = h.cell_features[j][q]
            assert got.shape == (min(cap, counts[p]), 6)
            if counts[p] > cap:  # the largest nuclei are kept
                kept = np.sort(got[:, 0])
                top = np.sort(area[cell_patch == p])[-cap:].astype(np.float32)
                np.testing.assert_allclose(kept, top, rtol=1e-6)

    b = collate_hierarchy([h])
    r, p = h.n_regions, max(h.n_patches)
    c = max(len(x) for reg in h.cell_features for x in reg)
    assert c == min(cap, counts.max())
    assert b.cell_features.shape == (1, r, p, c, 6) and b.cell_features.dtype == torch.float32
    assert b.patch_features.shape[:3] == (1, r, p) and b.patch_features.dtype == torch.float32
    assert b.region_mask.all()
    for j in range(r):
        k = h.n_patches[j]
        assert b.patch_mask[0, j, :k].all() and not b.patch_mask[0, j, k:].any()
        assert torch.equal(b.patch_positions[0, j, :k], torch.from_numpy(info["region_rc"][h.patch_indices[j]]).long())
        for q in range(k):
            n_c = len(h.cell_features[j][q])
            assert int(b.cell_mask[0, j, q].sum()) == n_c
            assert b.cell_mask[0, j, q, :n_c].all()


def test_limits_and_encoder(store: Path) -> None:
    from pathmllm.models.hierarchy import HierarchicalSlideEncoder, HierarchyConfig
    from pathmllm.models.hierarchy.store_batch import collate_hierarchy, load_slide_hierarchy

    full = load_slide_hierarchy(store, ENCODER)
    q = full.patch_features[0][0]
    small = load_slide_hierarchy(store, ENCODER, max_regions=2, max_patches_per_region=2, max_cells_per_patch=3,
                                 question_vec=q)
    assert small.n_regions == min(2, full.n_regions)
    assert all(n <= 2 for n in small.n_patches)
    assert set(small.region_ids) <= set(full.region_ids)
    assert all(len(x) <= 3 for reg in small.cell_features for x in reg)
    again = load_slide_hierarchy(store, ENCODER, max_regions=2, max_patches_per_region=2, max_cells_per_patch=3,
                                 question_vec=q)
    assert np.array_equal(small.region_ids, again.region_ids)  # deterministic

    batch = collate_hierarchy([full, small])
    r, p = full.n_regions, max(full.n_patches)
    assert batch.region_mask.shape == (2, r)
    assert int(batch.region_mask[1].sum()) == small.n_regions
    assert int(batch.patch_mask[1].sum()) == sum(small.n_patches)
    assert batch.patch_mask.shape == (2, r, p)
    assert not batch.cell_mask[1, small.n_regions:].any()

    dp = full.patch_features[0].shape[1]
    cfg = HierarchyConfig(cell_feature_dim=6, patch_feature_dim=dp, hidden_dim=32, num_heads=2, llm_hidden_size=64,
                          num_slide_tokens=4, resampler_heads=2, ccaf_layers=1, region_layers=1, resampler_layers=1)
    torch.manual_seed(0)
    enc = HierarchicalSlideEncoder(cfg).eval()
    with torch.no_grad():
        out = enc(batch)
    assert out.slide_tokens.shape == (2, 4, 64)
    assert torch.isfinite(out.slide_tokens).all()
    assert all(torch.isfinite(v).all() for v in out.pooled.values())


def test_missing_stages(store: Path, tmp_path: Path) -> None:
    from pathmllm.models.hierarchy.store_batch import StoreStageMissingError, load_slide_hierarchy
    from pathmllm.wsi.store import SlideStore

    copy = tmp_path / "s" / "v" / store.name
    shutil.copytree(store, copy)
    with pytest.raises(StoreStageMissingError, match=r"features.*pathmllm slide features SLIDE -e uni"):
        load_slide_hierarchy(copy, "uni")
    (copy / "cells.parquet").unlink()
    with pytest.raises(StoreStageMissingError, match=r"cells stage missing: run `pathmllm slide cells SLIDE --out OUT`"):
        load_slide_hierarchy(copy, ENCODER)
    with pytest.raises(StoreStageMissingError, match="pathmllm slide tile"):
        load_slide_hierarchy(tmp_path / "nowhere", ENCODER)
    assert SlideStore.open(copy).is_done("patches")


def test_no_tissue(store: Path, tmp_path: Path) -> None:
    """A store whose tiling kept no patch (tile_slide itself refuses a slide without tissue)."""
    from pathmllm.models.hierarchy.store_batch import load_slide_hierarchy
    from pathmllm.wsi.coords_h5 import write_coords_h5
    from pathmllm.wsi.store import SlideStore

    copy = tmp_path / "s" / "v" / store.name
    shutil.copytree(store, copy)
    _, attrs = SlideStore.open(copy).coords()
    write_coords_h5(copy / "coords.h5", np.zeros((0, 2), dtype=np.int64), attrs)
    with pytest.raises(ValueError, match="no tissue patches"):
        load_slide_hierarchy(copy, ENCODER)


def test_fixture_exercises_limits(store: Path) -> None:
    """The 4x4 slide has more regions, patches and cells than the limits used above."""
    from pathmllm.models.hierarchy.store_batch import load_slide_hierarchy

    h = load_slide_hierarchy(store, ENCODER, max_cells_per_patch=10**6)
    assert h.n_regions > 2 and max(h.n_patches) > 2 and h.n_cells_total.max() > 5
