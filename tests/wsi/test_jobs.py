"""Batches: every bad input named in the issue is reported clearly and the rest finish."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pathmllm.wsi.discover import find_slides
from pathmllm.wsi.jobs import run_batch
from pathmllm.wsi.pipeline import tile_slide
from tests.conftest import shared
from tests.helpers import tissue_image, write_pyramid

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory: pytest.TempPathFactory, example_slide: Path) -> Path:
    """A folder with one good slide and every kind of bad input."""
    d = tmp_path_factory.mktemp("batch")
    shutil.copy(example_slide, d / "good.svs")
    for f in shared("slides", "broken").iterdir():
        shutil.copy(f, d / f.name)
    data = example_slide.read_bytes()
    (d / "truncated.svs").write_bytes(data[: len(data) // 3])
    (d / "notes.svs").write_text("Not a slide, just a text file someone named .svs\n")
    (d / "empty.svs").write_bytes(b"")
    write_pyramid(d / "blank.tiff", tissue_image(1024, 1024, blobs=[]), mpp=0.5)
    write_pyramid(d / "tiny.tiff", tissue_image(128, 128), mpp=0.5, downsamples=(1,), tile=64)
    write_pyramid(d / "nompp.tiff", tissue_image(512, 512), mpp=None, downsamples=(1,))
    return d


EXPECTED = {
    "unopenable": ("SlideReadError", "Unsupported TIFF compression"),
    "unreadable": ("SlideReadError", "pixel data cannot be decoded"),
    "truncated": (None, "cannot read it"),
    "notes": ("SlideOpenError", "cannot read it"),
    "empty": ("SlideOpenError", "the file is empty (0 bytes)"),
    "blank": ("NoTissueError", "no tissue found"),
    "tiny": ("SlideTooSmallError", "smaller than one 256 px patch"),
    "nompp": ("MissingMppError", "pass it with --mpp"),
}


def _check(report: dict, n_good: int = 1) -> None:
    failures = {f["slide"]: f for f in report["failures"]}
    for slide, (error, text) in EXPECTED.items():
        assert slide in failures, f"{slide} should be reported"
        if error:
            assert failures[slide]["error"] == error, failures[slide]
        assert text in failures[slide]["message"], failures[slide]["message"]
        assert "traceback" not in failures[slide]  # an expected problem, not a crash
    assert [r["slide"] for r in report["results"]] == ["good"] * n_good
    assert report["results"][0]["n_patches"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_reports_each_bad_slide_and_finishes_the_good_one(bad_batch: Path, tmp_path: Path, workers: int) -> None:
    found = find_slides([bad_batch])
    report = run_batch(found.slides, tile_slide, {"out": str(tmp_path)}, workers=workers, report_dir=tmp_path)
    assert not report.ok
    _check(report.to_dict())
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert {e["slide"] for e in errors} == set(EXPECTED)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_done"] == 1 and summary["n_failed"] == len(EXPECTED)


def test_rerun_after_fixing_resumes(bad_batch: Path, tmp_path: Path) -> None:
    slides = find_slides([bad_batch]).slides
    run_batch(slides, tile_slide, {"out": str(tmp_path)}, workers=1)
    nompp = [p for p in slides if p.name == "nompp.tiff"]
    again = run_batch(slides, tile_slide, {"out": str(tmp_path)}, workers=1)
    assert {r["slide"]: r["status"] for r in again.results} == {"good": "skipped"}
    fixed = run_batch(nompp, tile_slide, {"out": str(tmp_path), "mpp": 0.5}, workers=1)
    assert fixed.ok and fixed.results[0]["n_patches"] > 0


def test_discovery(bad_batch: Path, tmp_path: Path) -> None:
    found = find_slides([bad_batch, tmp_path / "missing"])
    names = sorted(p.name for p in found.slides)
    assert "good.svs" in names and "notes.svs" in names and len(names) == 9
    assert found.problems == [(str(tmp_path / "missing"), "no such file or folder")]
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "readme.txt").write_text("no slides here")
    found = find_slides([empty])
    assert not found.slides and "no slides in this folder" in found.problems[0][1]


def test_dicom_series_counts_once() -> None:
    found = find_slides([shared("slides", "synthetic")])
    dcm = [p.name for p in found.slides if p.suffix == ".dcm"]
    assert dcm == ["boxes_0.dcm"]


def test_same_slide_name_twice_is_refused(example_slide: Path, tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(example_slide, tmp_path / sub / "s.svs")
    report = run_batch([tmp_path / "a" / "s.svs", tmp_path / "b" / "s.svs"], tile_slide, {"out": str(tmp_path / "o")}, workers=1)
    assert len(report.results) == 1
    assert "same slide name" in report.failures[0].message


def _crash(path: str, **kwargs: object) -> dict:
    if path.endswith("crash"):
        os._exit(3)  # what a segfaulting C reader does to the worker
    return {"slide": Path(path).name, "status": "done"}


def test_a_crashing_worker_is_isolated_and_reported() -> None:
    report = run_batch(["a", "b", "crash", "c", "d"], _crash, workers=2)
    assert sorted(r["slide"] for r in report.results) == ["a", "b", "c", "d"]
    assert [(f.slide, f.error) for f in report.failures] == [("crash", "WorkerCrash")]
    assert "crashed the worker" in report.failures[0].message


def _boom(path: str, **kwargs: object) -> dict:
    raise RuntimeError("bug in a task")


def test_unexpected_errors_keep_their_traceback() -> None:
    report = run_batch(["x"], _boom, workers=1)
    f = report.failures[0]
    assert f.error == "RuntimeError" and "please report" in f.message and "bug in a task" in (f.traceback or "")


@pytest.mark.ray
def test_ray_engine_on_a_local_instance(example_slide: Path, pyramid: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    report = run_batch([example_slide, pyramid, bad], tile_slide, {"out": str(tmp_path / "o")}, engine="ray", workers=2)
    assert sorted(r["slide"] for r in report.results) == ["CMU-1-Small-Region", "pyramid"]
    assert [f.slide for f in report.failures] == ["bad"] and report.failures[0].error == "SlideOpenError"
    assert (tmp_path / "o" / "pyramid" / "0.5mpp_256px" / "coords.h5").exists()
