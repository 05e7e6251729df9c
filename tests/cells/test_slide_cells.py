"""Cells over a whole slide: border nuclei counted once, level-0 geometry, QuPath GeoJSON, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pathmllm.cells.base import SEGMENTERS, NucleusSegmenter, check_rgb
from pathmllm.cells.features import pool_feature_map
from pathmllm.cells.slide import CellConfig, segment_slide
from pathmllm.wsi.tiling import TilingConfig
from tests.conftest import SHARED_TOOLS
from tests.helpers import write_pyramid


class ThresholdSegmenter(NucleusSegmenter):
    """Dark pixels, connected components: exact on the synthetic slide below."""

    name = "test-threshold"

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        from skimage.measure import label

        rgb = check_rgb(rgb)
        return label(rgb.mean(axis=2) < 120).astype(np.int32)


if "test-threshold" not in SEGMENTERS:
    SEGMENTERS.add("test-threshold", ThresholdSegmenter, needs_weights=False)
# spawned workers import the class by path; the registered name serves in-process runs
BY_PATH = "tests.cells.test_slide_cells:ThresholdSegmenter"


# nuclei (cx, cy, r) in level-0 px of a 0.5 µm/px slide; patches of 128 px at 0.5 µm/px
NUCLEI = [(60, 60, 8), (128, 64, 9), (250, 250, 7), (384, 200, 10), (300, 380, 6), (127, 300, 8)]


@pytest.fixture(scope="module")
def nuclei_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = np.zeros((512, 512, 3), np.uint8)
    img[:] = (230, 150, 200)  # pink "tissue" everywhere, so every patch is kept
    yy, xx = np.mgrid[0:512, 0:512]
    for cx, cy, r in NUCLEI:
        img[(xx - cx + 0.5) ** 2 + (yy - cy + 0.5) ** 2 <= r * r] = (60, 30, 110)
    return write_pyramid(tmp_path_factory.mktemp("cells") / "nuclei.tiff", img, mpp=0.5, downsamples=(1,), tile=128)


CFG = TilingConfig(patch_size=128, min_tissue=0.0)


def test_every_nucleus_once_with_level0_geometry(nuclei_slide: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    res = segment_slide(nuclei_slide, tmp_path, CFG, CellConfig(backend="test-threshold"), workers=1)
    assert res.status == "done" and res.n_cells == len(NUCLEI) and res.n_patches == 16
    table = pq.read_table(Path(res.store) / "cells.parquet").to_pandas().sort_values("x")
    want = sorted(NUCLEI)
    np.testing.assert_allclose(table["x"], [c[0] for c in want], atol=0.6)
    np.testing.assert_allclose(table["y"], [c[1] for c in want], atol=0.6)
    np.testing.assert_allclose(table["area_um2"], [np.pi * r * r * 0.25 for _, _, r in want], rtol=0.12)
    assert (table["hematoxylin_od"] > 0).all()
    # the nucleus centred on the patch border x=128 belongs to exactly one patch
    per_patch = pq.read_table(Path(res.store) / "cells_per_patch.parquet").to_pandas()
    assert per_patch["n_cells"].sum() == len(NUCLEI)
    assert per_patch["density_per_mm2"].max() == pytest.approx(1 / (128 * 0.5 / 1000) ** 2)
    import shapely

    nuc = shapely.from_wkb(table["nucleus_wkb"].iloc[0])
    cell = shapely.from_wkb(table["cell_wkb"].iloc[0])
    assert cell.contains(nuc.centroid) and cell.area > nuc.area
    assert nuc.centroid.x == pytest.approx(table["x"].iloc[0], abs=0.6)


def test_cells_geojson_imports_in_qupath(nuclei_slide: Path, tmp_path: Path) -> None:
    res = segment_slide(nuclei_slide, tmp_path, CFG, CellConfig(backend="test-threshold"), workers=1)
    gj = Path(res.store) / "cells.geojson"
    data = json.loads(gj.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == len(NUCLEI)
    f0 = data["features"][0]
    assert f0["properties"]["objectType"] == "cell" and "nucleusGeometry" in f0
    assert set(f0["properties"]["measurements"]) >= {"area_um2", "hematoxylin_od"}
    script = SHARED_TOOLS / "qupath_geojson_check.py"
    if not script.exists():
        pytest.skip("shared QuPath checker absent")
    out = subprocess.run([sys.executable, str(script), str(gj), "--width", "512", "--height", "512",
                          "--expect-type", "cell"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert (Path(res.store) / "cells_overlay.png").exists() and (Path(res.store) / "cells_patch_overlay.png").exists()


def test_resume_and_parallel_equal_serial(nuclei_slide: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    cfg = CellConfig(backend=BY_PATH, chunk_patches=4)
    first = segment_slide(nuclei_slide, tmp_path / "a", CFG, cfg, workers=1)
    assert segment_slide(nuclei_slide, tmp_path / "a", CFG, cfg).status == "skipped"
    parts = sorted((Path(first.store) / "cells").glob("part-*.parquet"))
    assert len(parts) == 4
    # a killed run: one part missing and the stage not marked done
    parts[2].unlink()
    m = json.loads((Path(first.store) / "manifest.json").read_text())
    del m["stages"]["cells"]
    (Path(first.store) / "manifest.json").write_text(json.dumps(m))
    again = segment_slide(nuclei_slide, tmp_path / "a", CFG, cfg)
    assert again.status == "done" and again.n_cells == first.n_cells
    assert again.megapixels == pytest.approx(4 * 128 * 128 / 1e6)  # only the missing chunk was redone
    par = segment_slide(nuclei_slide, tmp_path / "b", CFG, cfg, workers=2)
    ta = pq.read_table(Path(first.store) / "cells.parquet").drop(["cell_id"])
    tb = pq.read_table(Path(par.store) / "cells.parquet").drop(["cell_id"])
    assert ta.equals(tb)


def test_unknown_backend(nuclei_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cell backend 'cellvit'"):
        segment_slide(nuclei_slide, tmp_path, CFG, CellConfig(backend="cellvit"))
    with pytest.raises(ValueError, match="cannot load cell backend 'nowhere:Nothing'"):
        segment_slide(nuclei_slide, tmp_path, CFG, CellConfig(backend="nowhere:Nothing"))


def test_blank_patches_give_no_cells_not_errors(tmp_path: Path) -> None:
    img = np.zeros((256, 256, 3), np.uint8)
    img[:] = (230, 150, 200)
    slide = write_pyramid(tmp_path / "pink.tiff", img, mpp=0.5, downsamples=(1,), tile=128)
    res = segment_slide(slide, tmp_path / "o", CFG, CellConfig(backend="test-threshold"))
    assert res.status == "done" and res.n_cells == 0
    assert json.loads((Path(res.store) / "cells.geojson").read_text())["features"] == []


def test_pool_feature_map_is_an_area_weighted_mean() -> None:
    fmap = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)  # C=2, 2x2 cells
    labels = np.zeros((4, 4), int)
    labels[0:2, 0:2] = 1  # entirely in cell (0, 0)
    labels[2:4, 1:3] = 2  # half in (1, 0), half in (1, 1)
    pooled = pool_feature_map(fmap, labels)
    np.testing.assert_allclose(pooled[0], fmap[:, 0, 0])
    np.testing.assert_allclose(pooled[1], (fmap[:, 1, 0] + fmap[:, 1, 1]) / 2)


def test_cell_features_agree_with_regionprops() -> None:
    """The vectorised features against scikit-image's per-region computation."""
    from skimage.measure import label, regionprops

    from pathmllm.cells.features import cell_features

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:120, 0:160]
    labels = np.zeros((120, 160), np.int32)
    for i in range(12):
        cy, cx, a, b = rng.uniform(15, 105), rng.uniform(15, 145), rng.uniform(3, 9), rng.uniform(3, 9)
        labels[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = i + 1
    labels = label(labels > 0).astype(np.int32)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    f = cell_features(labels, rgb, mpp=0.5, origin=(100.0, 200.0), scale=2.0)
    from pathmllm.cells.features import stain_densities

    h_od, _ = stain_densities(rgb)
    for i, r in enumerate(regionprops(labels, intensity_image=h_od)):
        assert f["label"][i] == r.label
        assert f["area_um2"][i] == pytest.approx(r.area * 0.25)
        assert f["x"][i] == pytest.approx(100 + (r.centroid[1] + 0.5) * 2)
        assert f["y"][i] == pytest.approx(200 + (r.centroid[0] + 0.5) * 2)
        assert f["eccentricity"][i] == pytest.approx(r.eccentricity, abs=1e-6)
        assert f["hematoxylin_od"][i] == pytest.approx(r.intensity_mean, rel=1e-5)
        assert f["solidity"][i] == pytest.approx(r.solidity, abs=0.08)  # outline vs pixel hull
        assert f["perimeter_um"][i] == pytest.approx(r.perimeter * 0.5, rel=0.15)
