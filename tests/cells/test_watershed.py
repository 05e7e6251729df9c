"""The weight-free watershed nucleus segmenter: synthetic nuclei with known truth, scale
consistency between 40x and 20x, empty and invalid inputs, and MoNuSeg accuracy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pathmllm.cells.base import SEGMENTERS, build_segmenter
from pathmllm.cells.metrics import aji, match, score
from pathmllm.cells.watershed import (
    WatershedConfig,
    WatershedSegmenter,
    _merge_shallow,
    haematoxylin_od,
)

BACKGROUND = np.array([236.0, 196.0, 220.0])  # eosin-pink stroma
NUCLEUS = np.array([105.0, 70.0, 160.0])  # haematoxylin blue-purple
RADIUS_UM = 3.0
ISOLATED_UM = [(12.0, 12.0), (12.0, 62.0), (40.0, 40.0), (66.0, 14.0)]
#: touching pairs: (centre of the pair in µm, angle of the axis); the two discs overlap a little
PAIRS_UM = [((30.0, 64.0), 0.0), ((62.0, 60.0), np.pi / 2), ((62.0, 38.0), np.pi / 4), ((16.0, 36.0), 2.0)]


def _render(mask_cover: np.ndarray, seed: int, noise: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cover = mask_cover[..., None]
    img = BACKGROUND * (1 - cover) + NUCLEUS * cover + rng.normal(0, noise, mask_cover.shape + (3,))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def synthetic_nuclei(mpp: float, size_um: float = 80.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like image of discs of radius 3 µm (4 isolated, 4 touching pairs) and its truth.

    Discs are anti-aliased; in the overlap of a pair each pixel belongs to the nearer centre.
    """
    sep = 1.85 * RADIUS_UM
    centres = list(ISOLATED_UM)
    for (cy, cx), angle in PAIRS_UM:
        dy, dx = np.sin(angle) * sep / 2, np.cos(angle) * sep / 2
        centres += [(cy - dy, cx - dx), (cy + dy, cx + dx)]
    n = int(round(size_um / mpp))
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * mpp
    d = np.stack([np.hypot(yy - cy, xx - cx) for cy, cx in centres])
    nearest = d.min(axis=0)
    cover = np.clip((RADIUS_UM - nearest) / mpp + 0.5, 0, 1)
    truth = np.where(nearest <= RADIUS_UM, d.argmin(axis=0) + 1, 0).astype(np.int32)
    return _render(cover, seed), truth


def _ellipses(mpp: float, seed: int, semi_axes: tuple[float, float]) -> np.ndarray:
    """Four elongated nuclei (one each) in a 60 µm square, at different angles."""
    n = int(round(60 / mpp))
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * mpp
    a, b = semi_axes
    cover = np.zeros((n, n))
    for k in range(4):
        cy, cx, th = 15 + 30 * (k // 2), 15 + 30 * (k % 2), 0.4 * k + seed
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        cover = np.maximum(cover, np.clip((1 - np.hypot(u / a, v / b)) * b / mpp + 0.5, 0, 1))
    return _render(cover, seed)


@pytest.fixture(scope="module")
def seg() -> WatershedSegmenter:
    return WatershedSegmenter()


# --- synthetic nuclei ------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_touching_pairs_split_and_isolated_kept(seg: WatershedSegmenter, mpp: float, seed: int) -> None:
    rgb, truth = synthetic_nuclei(mpp, seed=seed)
    labels = seg.segment(rgb, mpp)
    n_true = len(ISOLATED_UM) + 2 * len(PAIRS_UM)
    assert labels.shape == truth.shape and labels.dtype == np.int32
    assert labels.max() == n_true, f"expected {n_true} nuclei, found {labels.max()}"
    assert set(np.unique(labels)) == set(range(n_true + 1)), "labels must be 0..N without gaps"
    m = match(truth, labels)
    assert m.tp == n_true and m.fp == 0 and m.fn == 0  # every disc, pair halves included, found once
    assert aji(truth, labels) > 0.85
    s = score(truth, labels)
    assert s.dice > 0.9 and s.pq > 0.85
    # each half of a touching pair is its own instance, and each isolated disc is one
    for k in range(1, n_true + 1):
        inside = labels[truth == k]
        assert np.bincount(inside[inside > 0]).argmax() > 0
    pairs_first = len(ISOLATED_UM) + 1
    for p in range(len(PAIRS_UM)):
        a, b = pairs_first + 2 * p, pairs_first + 2 * p + 1
        la = np.bincount(labels[truth == a]).argmax()
        lb = np.bincount(labels[truth == b]).argmax()
        assert la and lb and la != lb, f"touching pair {p} was not split"


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_elongated_nuclei_not_cut(seg: WatershedSegmenter, mpp: float) -> None:
    for semi_axes in [(6.0, 2.5), (8.0, 3.0)]:  # 12-16 µm long spindle nuclei
        for seed in range(3):  # different angles and noise
            assert seg.segment(_ellipses(mpp, seed, semi_axes), mpp).max() == 4, (semi_axes, seed)


def test_merge_shallow_is_the_h_maxima_criterion() -> None:
    """Regions 1 and 2 (peaks 1.0 and 1.2, saddle 0.95: the lower peak rises 0.05 above it)
    merge at h = 0.1 but not at h = 0.01; regions 3 and 4 (saddle 0.2, peaks 2.0) never do."""
    height = np.array([[1.0, 0.97, 0.95, 0.96, 1.2, 0.0, 2.0, 1.0, 0.2, 1.0, 2.0]])
    labels = np.array([[1, 1, 1, 2, 2, 0, 3, 3, 4, 4, 4]], dtype=np.int32)
    merged = _merge_shallow(labels, height, 0.1)
    assert len(set(merged[0, :5])) == 1 and merged[0, 0] != 0
    assert merged[0, 5] == 0 and merged[0, 6] != merged[0, 10]
    assert len(np.unique(merged)) == 4  # background + 3 regions
    np.testing.assert_array_equal(_merge_shallow(labels, height, 0.01), labels)


def test_scale_consistency_40x_vs_20x(seg: WatershedSegmenter) -> None:
    """The same tissue at 0.25 µm/px and block-averaged 2x to 0.5 µm/px: same nuclei."""
    for seed in (0, 3):
        rgb, truth = synthetic_nuclei(0.25, seed=seed)
        h, w, _ = rgb.shape
        half = rgb.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        full_labels = seg.segment(rgb, 0.25)
        half_labels = seg.segment(half, 0.5)
        assert full_labels.max() == half_labels.max() == truth.max()
        # areas in µm² agree too (the parameters are physical, not in pixels)
        full_area = np.sort(np.bincount(full_labels.ravel())[1:] * 0.25**2)
        half_area = np.sort(np.bincount(half_labels.ravel())[1:] * 0.5**2)
        np.testing.assert_allclose(full_area, half_area, rtol=0.15)
        assert aji(truth[::2, ::2], half_labels) > 0.8


def test_same_config_different_mpp_changes_pixel_sizes() -> None:
    """A 20 µm² disc drawn at 0.5 µm/px is kept; read as 1.0 µm/px it is 80 µm², read as
    0.1 µm/px it is 0.8 µm² and below min_area_um2: the µm² limits use mpp."""
    n, r_px = 60, 5.0
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    cover = np.clip(r_px - np.hypot(yy - 30, xx - 30) + 0.5, 0, 1)
    rgb = _render(cover, 0)
    seg = WatershedSegmenter(max_area_um2=60.0)
    assert seg.segment(rgb, 0.5).max() == 1
    assert seg.segment(rgb, 1.0).max() == 0  # 80 µm² > max_area_um2
    assert seg.segment(rgb, 0.1).max() == 0  # 0.8 µm² < min_area_um2


# --- empty and invalid inputs -----------------------------------------------------------


@pytest.mark.parametrize(
    "colour",
    [(255, 255, 255), (244, 242, 246), (0, 200, 0), (40, 200, 60), (230, 200, 220), (0, 0, 0), (90, 60, 150)],
    ids=["white", "glass", "green", "dull-green", "pink", "black", "flat-haematoxylin"],
)
@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_flat_images_give_no_nuclei(seg: WatershedSegmenter, colour: tuple[int, int, int], noise: float) -> None:
    rng = np.random.default_rng(0)
    rgb = np.clip(np.array(colour, float) + rng.normal(0, noise, (200, 200, 3)), 0, 255).astype(np.uint8)
    labels = seg.segment(rgb, 0.25)
    assert labels.shape == (200, 200) and labels.dtype == np.int32
    assert labels.max() == 0


def test_tiny_and_batch_inputs(seg: WatershedSegmenter) -> None:
    assert seg.segment(np.zeros((2, 2, 3), np.uint8), 0.5).shape == (2, 2)
    assert seg.segment(np.zeros((0, 5, 3), np.uint8), 0.5).shape == (0, 5)
    rgb, _ = synthetic_nuclei(0.5)
    white = np.full_like(rgb, 250)
    out = seg.segment_batch([rgb, white], 0.5)
    assert [o.max() for o in out] == [12, 0]


def test_wrong_channel_count_is_a_clear_error(seg: WatershedSegmenter) -> None:
    grey = np.full((50, 50), 200, np.uint8)
    with pytest.raises(ValueError, match="single-channel"):
        seg.segment(grey, 0.5)
    with pytest.raises(ValueError, match=r"expected an RGB image \(H, W, 3\)"):
        seg.segment(np.zeros((50, 50, 2), np.uint8), 0.5)
    with pytest.raises(ValueError, match=r"expected an RGB image \(H, W, 3\)"):
        seg.segment(np.zeros((2, 50, 50, 3), np.uint8), 0.5)


def test_rgba_and_float_inputs_match_rgb(seg: WatershedSegmenter) -> None:
    rgb, _ = synthetic_nuclei(0.5)
    ref = seg.segment(rgb, 0.5)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(seg.segment(rgba, 0.5), ref)
    np.testing.assert_array_equal(seg.segment(rgb / 255.0, 0.5), ref)


@pytest.mark.parametrize("mpp", [0, -0.25, float("nan"), None])
def test_bad_mpp(seg: WatershedSegmenter, mpp: object) -> None:
    with pytest.raises(ValueError, match="mpp"):
        seg.segment(np.zeros((20, 20, 3), np.uint8), mpp)  # type: ignore[arg-type]


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError, match="min_area_um2"):
        WatershedConfig(min_area_um2=-1)
    with pytest.raises(ValueError, match="max_area_um2"):
        WatershedConfig(min_area_um2=50, max_area_um2=40)
    with pytest.raises(ValueError, match="blob_sigma_um"):
        WatershedConfig(blob_sigma_um=0)
    with pytest.raises(TypeError):
        WatershedSegmenter(min_area=3)  # not a field: a typo is not silently ignored
    seg = WatershedSegmenter(WatershedConfig(min_area_um2=5.0), max_area_um2=100.0)
    assert seg.config.min_area_um2 == 5.0 and seg.config.max_area_um2 == 100.0
    assert WatershedSegmenter(min_seed_distance_um=3.0).config.min_seed_distance_um == 3.0


def test_registered_without_weights() -> None:
    seg = build_segmenter("watershed", min_area_um2=6.0)
    assert isinstance(seg, WatershedSegmenter) and seg.config.min_area_um2 == 6.0
    entry = SEGMENTERS.entry("watershed")
    assert entry.metadata["needs_weights"] is False and entry.metadata["description"]


def test_haematoxylin_matches_skimage_rgb2hed() -> None:
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(haematoxylin_od(rgb), np.maximum(rgb2hed(rgb)[..., 0], 0) * 6, atol=1e-5)


def test_speed_1000px(seg: WatershedSegmenter) -> None:
    rgb, _ = synthetic_nuclei(0.25, size_um=250.0)  # 1000 x 1000 px
    seg.segment(rgb[:100, :100], 0.25)  # warm the lazy imports
    t = time.perf_counter()
    seg.segment(rgb, 0.25)
    assert time.perf_counter() - t < 4.0  # ~0.3 s here; generous for a loaded CI machine


# --- real data ---------------------------------------------------------------------------


@pytest.mark.data
def test_monuseg_accuracy(seg: WatershedSegmenter) -> None:
    """Mean AJI >= 0.45 and pixel Dice >= 0.70 on the 8 MoNuSeg training images (measured
    0.482 / 0.751, docs/cells-watershed.md)."""
    from pathmllm.cells.datasets import load_monuseg_folder
    from tests.conftest import shared

    samples = load_monuseg_folder(shared("nuclei", "monuseg-train"))
    assert len(samples) >= 8
    scores = [score(s.labels, seg.segment(s.image, s.mpp)) for s in samples]
    mean_aji = float(np.mean([s.aji for s in scores]))
    mean_dice = float(np.mean([s.dice for s in scores]))
    table = "\n".join(f"{smp.name}: AJI {s.aji:.3f} Dice {s.dice:.3f}" for smp, s in zip(samples, scores))
    assert mean_aji >= 0.45, f"mean AJI {mean_aji:.3f} < 0.45\n{table}"
    assert mean_dice >= 0.70, f"mean Dice {mean_dice:.3f} < 0.70\n{table}"
    assert all(s.aji > 0.35 for s in scores), table
