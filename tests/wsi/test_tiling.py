"""Patch grid, tissue fractions and regions, checked against brute-force computations."""

from __future__ import annotations

import numpy as np
import pytest

from pathmllm.wsi.errors import SlideTooSmallError
from pathmllm.wsi.resolution import plan_read
from pathmllm.wsi.tiling import TilingConfig, make_grid, tissue_fractions
from pathmllm.wsi.tissue import TissueMask


def _brute_fraction(mask: np.ndarray, ds: float, x: int, y: int, fp: int) -> float:
    """Upsample the mask to level 0 by repetition and count."""
    h, w = mask.shape
    up = np.repeat(np.repeat(mask, int(ds), axis=0), int(ds), axis=1)
    region = np.zeros((fp, fp), bool)
    sub = up[y : y + fp, x : x + fp]
    region[: sub.shape[0], : sub.shape[1]] = sub
    return float(region.mean())


def test_tissue_fractions_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) > 0.5
    tm = TissueMask(mask, (8.0, 8.0), 4.0)
    coords = np.array([[0, 0], [5, 3], [100, 77], [313, 229], [300, 200]], dtype=np.int64)
    got = tissue_fractions(tm, coords, 20)
    want = [_brute_fraction(mask, 8, x, y, 20) for x, y in coords]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_grid_lattice_regions_and_threshold() -> None:
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True  # left half is tissue
    tm = TissueMask(mask, (16.0, 16.0), 8.0)  # level 0 is 1024 x 1024 at 0.5 µm/px
    plan = plan_read(0.5, [1.0], 0.5, 64)
    cfg = TilingConfig(patch_size=64, region_size=4, min_tissue=0.5)
    grid = make_grid((1024, 1024), plan, tm, cfg)
    assert len(grid) == 8 * 16  # 8 of 16 columns, all 16 rows
    assert (grid.coords % 64 == 0).all() and grid.coords[:, 0].max() == 7 * 64
    # row-major order
    assert np.all(np.diff(grid.coords[:, 1]) >= 0)
    # regions: 4x4 patches, 2 region columns x 4 region rows hold patches
    assert grid.n_regions == 8
    assert (grid.regions["n_patches"] == 16).all()
    for i in range(len(grid)):
        r = grid.region_index[i]
        rx, ry = grid.regions["x"][r], grid.regions["y"][r]
        row, col = grid.region_rc[i]
        assert (grid.coords[i] == [rx + col * 64, ry + row * 64]).all()


def test_overlap_steps_and_edges() -> None:
    tm = TissueMask(np.ones((10, 10), bool), (100.0, 100.0), 50.0)
    plan = plan_read(0.5, [1.0], 0.5, 256)
    grid = make_grid((1000, 1000), plan, tm, TilingConfig(overlap=56, min_tissue=0.0))
    assert grid.step_level0 == 200
    xs = np.unique(grid.coords[:, 0])
    assert list(xs) == [0, 200, 400, 600, 800]  # the last patch crosses the edge (padded on read)


def test_min_tissue_zero_keeps_any_touching_patch() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    tm = TissueMask(mask, (100.0, 100.0), 50.0)
    plan = plan_read(0.5, [1.0], 0.5, 256)
    assert len(make_grid((1000, 1000), plan, tm, TilingConfig(min_tissue=0.0))) == 1
    assert len(make_grid((1000, 1000), plan, tm, TilingConfig(min_tissue=0.25))) == 0


def test_slide_smaller_than_a_patch() -> None:
    tm = TissueMask(np.ones((2, 2), bool), (8.0, 8.0), 4.0)
    plan = plan_read(0.5, [1.0], 0.5, 256)
    with pytest.raises(SlideTooSmallError, match=r"16x16 px .* smaller than one 256 px patch.*--patch-size"):
        make_grid((16, 16), plan, tm, TilingConfig(), "tiny")


@pytest.mark.parametrize(
    "kwargs", [{"target_mpp": 0}, {"patch_size": 4}, {"overlap": 256}, {"min_tissue": 1.5}, {"region_size": 0}]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TilingConfig(**kwargs)


def test_setting_names() -> None:
    assert TilingConfig().setting_name == "0.5mpp_256px"
    assert TilingConfig(target_mpp=0.25, patch_size=224, overlap=32).setting_name == "0.25mpp_224px_32px_overlap"
