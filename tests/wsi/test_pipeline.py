"""tile_slide end to end: SlideStore contents, resumability, and CLAM/TRIDENT/QuPath readers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pathmllm.wsi import open_slide
from pathmllm.wsi.errors import NoTissueError
from pathmllm.wsi.pipeline import tile_slide
from pathmllm.wsi.store import SlideStore
from pathmllm.wsi.tiling import TilingConfig
from tests.conftest import SHARED_TOOLS

pytestmark = pytest.mark.data


def run_client(tool: str, *args: str | Path) -> str:
    script = SHARED_TOOLS / tool
    if not script.exists():
        pytest.skip(f"{script} is absent (../shared/tools/clients sits beside the checkout in CI)")
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)
    verdict = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 0, res.stdout + res.stderr
    assert verdict.startswith("VERDICT: PASS"), verdict
    return res.stdout


def test_store_contents_on_the_example_slide(example_slide: Path, tmp_path: Path) -> None:
    r = tile_slide(example_slide, tmp_path)
    root = tmp_path / "CMU-1-Small-Region" / "0.5mpp_256px"
    assert r.store == str(root) and r.status == "done" and r.stages_run == ["tissue", "patches"]
    for name in ["coords.h5", "regions.parquet", "tissue.geojson", "thumbnail.png", "tissue_mask.png",
                 "tissue_overlay.png", "manifest.json"]:
        assert (root / name).exists(), name
    m = json.loads((root / "manifest.json").read_text())
    assert m["stages"]["tissue"]["done"] and m["stages"]["patches"]["done"]
    assert m["params"]["tiling"]["target_mpp"] == 0.5 and m["slide"]["mpp"] == pytest.approx(0.499)
    assert "pathmllm" in m["versions"] and "openslide-python" in m["versions"]

    store = SlideStore.open(root)
    coords, attrs = store.coords()
    assert coords.dtype == np.int64 and coords.shape == (r.n_patches, 2) and r.n_patches > 20
    # 0.499 µm/px snaps to 1:1 at 0.5 µm/px: one file serves CLAM (level 0) and TRIDENT
    assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 256 and attrs["patch_level"] == 0
    assert attrs["level0_magnification"] == 20 and attrs["target_magnification"] == 20.0
    assert isinstance(attrs["patch_size"], int) and isinstance(attrs["overlap"], int)
    info = store.patch_info()
    regions = store.regions()
    assert set(info) == {"tissue_fraction", "grid_rc", "region_index", "region_rc"}
    assert (info["tissue_fraction"] >= 0.25).all()
    assert regions["n_patches"].sum() == len(coords)
    # each patch's region and in-region position place it back exactly
    k, step = attrs["region_size"], attrs["step_level0"]
    for (x, y), ri, (row, col) in zip(coords, info["region_index"], info["region_rc"]):
        assert (x, y) == (regions["x"][ri] + col * step, regions["y"][ri] + row * step)
        assert 0 <= row < k and 0 <= col < k


def test_outputs_open_in_clam_trident_and_qupath(example_slide: Path, tmp_path: Path) -> None:
    tile_slide(example_slide, tmp_path, layouts=("clam", "trident"))
    root = tmp_path / "CMU-1-Small-Region" / "0.5mpp_256px"
    trident = tmp_path / "trident" / "20x_256px_0px_overlap" / "patches" / "CMU-1-Small-Region_patches.h5"
    clam = tmp_path / "clam" / "patches" / "CMU-1-Small-Region.h5"
    out = run_client("trident_read.py", trident, "--slide", example_slide, "--n", "0")
    assert "WARNING" not in out
    run_client("clam_read.py", clam, example_slide, "--n", "0")
    out = run_client("qupath_geojson_check.py", root / "tissue.geojson", "--slide", example_slide,
                     "--require", "gdal,tiatoolbox,paquo")
    assert "annotation" in out


def test_40x_pyramid_writes_a_separate_clam_file_for_a_real_level(pyramid: Path, tmp_path: Path) -> None:
    # 0.25 µm/px, levels 1/4/16: 256 px at 0.5 µm/px is 512 level-0 px, which no level serves
    tile_slide(pyramid, tmp_path, config=TilingConfig(min_tissue=0.1), layouts=("clam", "trident"))
    coords, attrs = SlideStore(tmp_path, "pyramid", "0.5mpp_256px").coords()
    assert attrs["patch_size_level0"] == 512 and "patch_level" not in attrs
    assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 20.0
    assert (coords % 512 == 0).all()
    clam = tmp_path / "clam" / "patches" / "pyramid.h5"
    with h5py.File(clam) as f:
        assert f["coords"].attrs["patch_level"] == 0 and f["coords"].attrs["patch_size"] == 512
    trident = next((tmp_path / "trident").glob("*/patches/pyramid_patches.h5"))
    assert trident.parent.parent.name == "20x_256px_0px_overlap"
    run_client("trident_read.py", trident, "--slide", pyramid)
    run_client("clam_read.py", clam, pyramid)


def test_rerun_skips_finished_work_and_param_change_redoes_it(example_slide: Path, tmp_path: Path) -> None:
    first = tile_slide(example_slide, tmp_path)
    coords_file = Path(first.store) / "coords.h5"
    mtime = coords_file.stat().st_mtime_ns
    again = tile_slide(example_slide, tmp_path)
    assert again.status == "skipped" and again.n_patches == first.n_patches
    assert coords_file.stat().st_mtime_ns == mtime
    changed = tile_slide(example_slide, tmp_path, config=TilingConfig(min_tissue=0.9))
    assert changed.status == "done" and changed.n_patches < first.n_patches
    forced = tile_slide(example_slide, tmp_path, config=TilingConfig(min_tissue=0.9), force=True)
    assert forced.stages_run == ["tissue", "patches"]


def test_a_run_killed_mid_stage_resumes_cleanly(example_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pathmllm.wsi.pipeline as pipeline

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if the process died after coords.h5 and regions were written

    monkeypatch.setattr(pipeline, "_write_overlay", killed)
    with pytest.raises(KeyboardInterrupt):
        tile_slide(example_slide, tmp_path)
    store = SlideStore(tmp_path, "CMU-1-Small-Region", "0.5mpp_256px")
    assert store.is_done("tissue") and not store.is_done("patches")
    (store.root / ".coords.h5.tmp-leftover").write_bytes(b"partial")  # a half-written temp file
    monkeypatch.undo()
    r = tile_slide(example_slide, tmp_path)
    assert r.stages_run == ["patches"]  # the finished tissue stage is not redone
    assert not list(store.root.glob(".*tmp-*"))
    assert store.is_done("patches") and len(store.coords()[0]) == r.n_patches


def test_sigkill_during_a_batch_loses_nothing(example_slide: Path, pyramid: Path, tmp_path: Path) -> None:
    """Kill the CLI for real after the first slide finished; the rerun completes the rest."""
    import shutil
    import time

    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(4):
        shutil.copy(example_slide, slides / f"s{i}.svs")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pathmllm.cli.main", "slide", "tile", str(slides), "--out", str(out), "-j", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(SlideStore(out, f"s{i}", "0.5mpp_256px").is_done("patches") for i in range(4)):
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = {i for i in range(4) if SlideStore(out, f"s{i}", "0.5mpp_256px").is_done("patches")}
    assert done_before, "the first slide should have finished before the kill"
    res = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    status = {r["slide"]: r["status"] for r in report["results"]}
    assert len(status) == 4
    assert all(status[f"s{i}"] == "skipped" for i in done_before)
    for i in range(4):
        store = SlideStore(out, f"s{i}", "0.5mpp_256px")
        assert store.is_done("patches") and not list(store.root.glob(".*tmp-*"))
        with h5py.File(store.path("coords.h5")) as f:
            assert f["coords"].shape[0] == report_n(report, f"s{i}")


def test_no_tissue_is_reported_and_keeps_the_thumbnail(blank_slide: Path, tmp_path: Path) -> None:
    with pytest.raises(NoTissueError, match=r"no tissue found .*thumbnail.png"):
        tile_slide(blank_slide, tmp_path)
    assert (tmp_path / "blank" / "0.5mpp_256px" / "thumbnail.png").exists()


def test_tissue_geojson_is_a_qupath_feature_collection(example_slide: Path, tmp_path: Path) -> None:
    r = tile_slide(example_slide, tmp_path)
    data = json.loads((Path(r.store) / "tissue.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    w, h = open_slide(example_slide).dimensions
    for feat in data["features"]:
        assert feat["properties"]["objectType"] == "annotation"
        assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert "type" not in feat["properties"]
        ring = feat["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        assert 0 <= min(xs) and max(xs) <= w and 0 <= min(ys) and max(ys) <= h


def report_n(report: dict, slide: str) -> int:
    return next(r["n_patches"] for r in report["results"] if r["slide"] == slide)
