from __future__ import annotations

import pytest

from pathmllm.wsi.resolution import (
    best_level,
    check_mpp,
    nominal_magnification,
    plan_read,
    snap_downsample,
)


def test_check_mpp_flags_dpi_defaults_and_nonsense() -> None:
    assert check_mpp((0.25, 0.25), "meta") is None
    assert "352.778" in check_mpp((352.7777, 352.7777), "meta")  # 72 dpi
    assert "not a positive number" in check_mpp((0.0, 0.0), "meta")
    assert "non-square" in check_mpp((0.25, 0.5), "meta")


@pytest.mark.parametrize(
    ("mpp", "mag"), [(0.12, 80), (0.18, 60), (0.2527, 40), (0.499, 20), (1.0, 10), (2.0, 5)]
)
def test_nominal_magnification_matches_trident_table(mpp: float, mag: int) -> None:
    assert nominal_magnification(mpp) == mag


def test_snap_to_level_or_whole_number_within_tolerance() -> None:
    assert snap_downsample(0.5 / 0.499, [1.0], 0.02) == 1.0
    assert snap_downsample(0.5 / 0.2527, [1.0, 4.0, 16.0], 0.02) == 2.0
    assert snap_downsample(4.03, [1.0, 4.016], 0.02) == 4.016
    assert snap_downsample(1.5, [1.0, 4.0], 0.02) == 1.5  # nothing close: exact


def test_best_level_is_coarsest_at_least_as_fine() -> None:
    levels = [1.0, 4.0, 16.0]
    assert best_level(levels, 1.0) == 0
    assert best_level(levels, 3.9) == 0
    assert best_level(levels, 4.0) == 1
    assert best_level(levels, 15.0) == 1
    assert best_level(levels, 64.0) == 2
    assert best_level(levels, 0.5) == 0  # finer than the scan: level 0, upsampled


def test_plan_read_40x_slide_at_20x() -> None:
    plan = plan_read(0.25, [1.0, 4.0, 16.0], 0.5, 256)
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (0, 512, 512)
    assert plan.needs_resize and plan.effective_mpp == pytest.approx(0.5)


def test_plan_read_reads_from_a_coarser_level_when_it_is_fine_enough() -> None:
    plan = plan_read(0.25, [1.0, 4.0, 16.0], 2.0, 224)  # 8x: level 1 (4x), read 448 px
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (1, 448, 1792)


def test_plan_read_exact_when_not_near_a_level() -> None:
    plan = plan_read(0.25, [1.0, 4.0], 0.37, 100, tolerance=0.01)
    assert plan.downsample == pytest.approx(1.48)
    assert plan.patch_size_level0 == 148
    assert plan.effective_mpp == pytest.approx(0.37)


def test_plan_read_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_read(0.25, [1.0], 0.0, 256)
    with pytest.raises(ValueError, match="positive"):
        plan_read(0.25, [1.0], 0.5, 0)
