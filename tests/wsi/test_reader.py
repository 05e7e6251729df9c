"""Slide reading across backends, on the real files in ../shared/data/slides."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathmllm.wsi import (
    ImplausibleMppError,
    MissingMppError,
    SlideOpenError,
    SlideReadError,
    open_slide,
)
from tests.conftest import shared
from tests.helpers import tissue_image, write_pyramid

pytestmark = pytest.mark.data


def test_svs_through_openslide(example_slide: Path) -> None:
    with open_slide(example_slide) as s:
        assert s.backend == "openslide"
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert s.vendor == "aperio"
        region = s.read_region((100, 200), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_openslide_and_tifffile_read_the_same_pixels(example_slide: Path) -> None:
    with open_slide(example_slide, backend="openslide") as a, open_slide(example_slide, backend="tifffile") as b:
        ra = a.read_region((1000, 1500), 0, (128, 128)).astype(int)
        rb = b.read_region((1000, 1500), 0, (128, 128)).astype(int)
        assert b.mpp == pytest.approx(a.mpp)
    # both decode the same JPEG tiles; decoders may differ by a level or two
    assert np.abs(ra - rb).mean() < 2.0


def test_plain_tiff_that_openslide_refuses_falls_back_to_tifffile() -> None:
    path = shared("slides", "kidney-48-5-ihc.tif")
    with open_slide(path) as s:
        assert s.backend == "tifffile"
        assert s.dimensions == (1493, 901)
        assert not s.has_mpp
        with pytest.raises(MissingMppError, match="--mpp"):
            _ = s.mpp
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "override (--mpp)"


def test_dicom_that_openslide_and_wsidicom_refuse_is_assembled_by_pydicom() -> None:
    path = shared("slides", "small_dicom.dcm")
    with open_slide(path, mpp=0.5) as s:
        assert s.backend == "pydicom"
        assert s.dimensions == (3236, 2638)
        # a region spanning four 500 px frames equals the frames pasted together
        region = s.read_region((450, 450), 0, (100, 100))
        assert region.shape == (100, 100, 3)
    with open_slide(path) as s:
        assert not s.has_mpp  # ImagedVolume 15x15 mm over 3236x2638 px is not square: no guess
        assert s.info()["mpp"] is None


def test_pydicom_frames_match_wsidicom_on_a_two_file_series() -> None:
    path = shared("slides", "synthetic", "boxes_0.dcm")
    with open_slide(path, backend="wsidicom") as a, open_slide(path, backend="pydicom") as b:
        assert a.dimensions == b.dimensions == (16, 16)
        assert a.level_count == b.level_count == 1  # the THUMBNAIL file is not a level
        assert a.mpp == b.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(a.read_region((0, 0), 0, (16, 16)), b.read_region((0, 0), 0, (16, 16)))


def test_png_through_pil(tmp_path: Path) -> None:
    img = tissue_image(300, 200)
    Image.fromarray(img).save(tmp_path / "tile.png", dpi=(72, 72))
    with open_slide(tmp_path / "tile.png") as s:
        assert s.backend == "pil" and s.dimensions == (300, 200)
        assert "outside the 0.05-16" in s.mpp_problem  # 72 dpi is not a microscope
        np.testing.assert_array_equal(s.read_region((10, 20), 0, (30, 40)), img[20:60, 10:40])


def test_implausible_mpp_is_flagged_and_names_the_flag() -> None:
    path = shared("slides", "synthetic", "boxes.tiff")
    with open_slide(path) as s:
        assert "352.778" in s.mpp_problem
        with pytest.raises(ImplausibleMppError, match=r"352\.778.*--mpp"):
            _ = s.mpp
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5
    with pytest.raises(ImplausibleMppError, match="--mpp gives 500"):
        open_slide(path, mpp=500.0)


def test_read_region_pads_outside_the_slide_with_white(pyramid: Path) -> None:
    with open_slide(pyramid) as s:
        w, h = s.dimensions
        region = s.read_region((w - 10, h - 10), 0, (30, 30))
        assert region.shape == (30, 30, 3)
        assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()
        inside = s.read_region((w - 10, h - 10), 0, (10, 10))
        np.testing.assert_array_equal(region[:10, :10], inside)
        assert (s.read_region((-50, -50), 0, (20, 20)) == 255).all()


def test_level_is_chosen_by_mpp_not_by_index(pyramid: Path) -> None:
    with open_slide(pyramid) as s:  # 0.25 µm/px, downsamples 1, 4, 16
        assert s.level_mpps == pytest.approx([0.25, 1.0, 4.0])
        assert s.best_level_for(0.5) == 0
        assert s.best_level_for(1.0) == 1
        assert s.best_level_for(2.0) == 1
        assert s.best_level_for(8.0) == 2
        patch = s.read_patch((512, 512), 224, mpp=2.0)
        assert patch.shape == (224, 224, 3)
        # the same tissue read from level 0 and resized agrees with the level-1 read
        from pathmllm.wsi.reader import resize

        direct = resize(s.read_region((512, 512), 0, (1792, 1792)), (224, 224)).astype(int)
        assert np.abs(direct - patch.astype(int)).mean() < 6


def test_thumbnail_is_bounded_and_reads_in_blocks(pyramid: Path) -> None:
    with open_slide(pyramid) as s:
        thumb, ds = s.thumbnail(max_size=256)
        assert max(thumb.shape[:2]) == 256 and ds == pytest.approx(2048 / 256)
        thumb2, ds2 = s.thumbnail(mpp=4.0)
        assert thumb2.shape[:2] == (96, 128) and ds2 == pytest.approx(16)


def test_corrupt_tiles_fail_with_a_read_error() -> None:
    with pytest.raises(SlideReadError, match=r"pixel data cannot be decoded.*complete, supported slide"):
        open_slide(shared("slides", "broken", "unreadable.svs"))


def test_unsupported_compression_fails_clearly() -> None:
    with pytest.raises((SlideOpenError, SlideReadError), match="Unsupported TIFF compression: 52479"):
        open_slide(shared("slides", "broken", "unopenable.tiff"))


def test_missing_empty_text_and_truncated_files(tmp_path: Path, example_slide: Path) -> None:
    with pytest.raises(SlideOpenError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "notes.svs").write_text("this is not a slide\n")
    with pytest.raises(SlideOpenError, match="cannot read it"):
        open_slide(tmp_path / "notes.svs")
    data = example_slide.read_bytes()
    (tmp_path / "truncated.svs").write_bytes(data[: len(data) // 2])
    with pytest.raises((SlideOpenError, SlideReadError), match="truncated.svs: cannot read it"):
        with open_slide(tmp_path / "truncated.svs") as s:
            s.thumbnail(max_size=64)


def test_unknown_backend_is_a_value_error(example_slide: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'vips'"):
        open_slide(example_slide, backend="vips")


def test_slide_pickles_by_path(example_slide: Path, tmp_path: Path) -> None:
    import pickle

    copy = tmp_path / "copy.svs"
    shutil.copy(example_slide, copy)
    s = open_slide(copy, mpp=0.5)
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.mpp == 0.5 and s2.backend == "openslide"
    np.testing.assert_array_equal(s.read_region((0, 0), 0, (8, 8)), s2.read_region((0, 0), 0, (8, 8)))


def test_info_is_json_serialisable(pyramid: Path) -> None:
    import json

    with open_slide(pyramid) as s:
        info = json.loads(json.dumps(s.info()))
    assert info["levels"][1]["mpp"] == pytest.approx(1.0)
    assert info["magnification"] == 40


def test_write_pyramid_without_mpp_needs_override(tmp_path: Path) -> None:
    p = write_pyramid(tmp_path / "nompp.tiff", tissue_image(512, 512), mpp=None, downsamples=(1,))
    with open_slide(p) as s:
        with pytest.raises(MissingMppError):
            _ = s.mpp
