"""Tissue detection on synthetic scenes with known answers, and on the real example slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathmllm.wsi import open_slide
from pathmllm.wsi.tissue import (
    TissueConfig,
    detect_tissue,
    mask_to_polygons,
    otsu,
    tissue_mask_from_rgb,
)
from tests.helpers import tissue_image


def _disc(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_otsu_splits_two_modes() -> None:
    values = np.concatenate([np.full(500, 0.1), np.full(500, 0.6)])
    assert 0.1 <= otsu(values) < 0.6


def test_pink_tissue_on_white_background() -> None:
    img = tissue_image(400, 300, blobs=[(150, 150, 80)])
    truth = _disc(300, 400, 150, 150, 80)
    mask, _ = tissue_mask_from_rgb(img, 8.0)
    assert _iou(mask, truth) > 0.95


def test_black_background_is_not_tissue() -> None:
    img = tissue_image(400, 300, blobs=[(200, 150, 70)])
    truth = _disc(300, 400, 200, 150, 70)
    img[~truth] = np.random.default_rng(1).integers(0, 25, size=(int((~truth).sum()), 3))
    mask, _ = tissue_mask_from_rgb(img, 8.0)
    assert _iou(mask, truth) > 0.95


def test_pen_marks_are_removed() -> None:
    img = tissue_image(400, 300, blobs=[(120, 150, 60)])
    truth = _disc(300, 400, 120, 150, 60)
    img[40:60, 220:380] = (30, 150, 60)  # green marker stroke
    img[240:260, 220:380] = (40, 60, 170)  # blue marker stroke
    img[120:135, 220:380] = (20, 20, 25)  # black marker stroke
    mask, _ = tissue_mask_from_rgb(img, 8.0)
    assert _iou(mask, truth) > 0.95
    without = tissue_mask_from_rgb(img, 8.0, TissueConfig(remove_pen=False))[0]
    assert without[40:60, 220:380].mean() > 0.9  # the filter, not the threshold, removed them


def test_small_holes_filled_large_holes_kept_specks_dropped() -> None:
    img = tissue_image(600, 400, blobs=[(300, 200, 150)])
    img[195:200, 195:200] = 245  # 5x5 px hole: 1,600 µm² at 8 µm/px -> filled
    big = _disc(400, 600, 300, 200, 40)  # ~5,000 px = 320,000 µm² -> kept
    img[big] = 245
    img[20:23, 20:23] = (200, 100, 170)  # 9 px speck = 576 µm² -> dropped
    mask, _ = tissue_mask_from_rgb(img, 8.0, TissueConfig(closing_um=8.0))
    assert mask[195:200, 195:200].all()
    assert not mask[big].any()
    assert not mask[15:30, 15:30].any()


def test_blank_image_has_no_tissue() -> None:
    mask, _ = tissue_mask_from_rgb(np.full((200, 200, 3), 240, np.uint8), 8.0)
    assert not mask.any()


def test_polygons_trace_the_mask_with_holes() -> None:
    mask = np.zeros((100, 120), bool)
    mask[10:90, 10:110] = True
    mask[40:60, 50:70] = False  # a hole
    mask[95:99, 0:4] = True  # a separate piece
    polys = mask_to_polygons(mask, (4.0, 4.0))
    assert len(polys) == 2
    big = max(polys, key=lambda p: p.area)
    assert big.is_valid and len(big.interiors) == 1
    assert big.area == pytest.approx((80 * 100 - 20 * 20) * 16, rel=0.02)
    minx, miny, maxx, maxy = big.bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((40, 40, 440, 360), abs=4)


@pytest.mark.data
def test_example_slide_tissue(example_slide: Path) -> None:
    with open_slide(example_slide) as s:
        t = detect_tissue(s)
    assert 0.25 < t.fraction < 0.6  # a strip of skin on white glass
    assert t.mpp == pytest.approx(8.0, rel=0.05)
    assert len(t.polygons) >= 1 and all(p.is_valid for p in t.polygons)
    feats = t.geojson_features(0.499)
    assert feats[0]["properties"]["classification"] == {"name": "Tissue", "color": [0, 160, 0]}
