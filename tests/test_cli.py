"""The pathmllm command: fast help, slide info, tile, export-patches and their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathmllm import __version__
from pathmllm.cli.main import app
from tests.conftest import shared

runner = CliRunner(env={"COLUMNS": "200"})


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"pathmllm {__version__}"


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, pathmllm.cli.main as m\n"
        "heavy = ['numpy', 'openslide', 'h5py', 'PIL', 'scipy', 'shapely', 'torch', 'ray', 'pyarrow', 'skimage']\n"
        "print([h for h in heavy if h in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "pathmllm.cli.main", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "slide" in res.stdout


def test_slide_info_table_and_json(example_slide: Path) -> None:
    res = runner.invoke(app, ["slide", "info", str(example_slide)])
    assert res.exit_code == 0, res.output
    assert "0.499" in res.output and "aperio" in res.output and "2220 x 2967" in res.output
    res = runner.invoke(app, ["slide", "info", str(example_slide), "--json"])
    data = json.loads(res.stdout)
    assert data["backend"] == "openslide" and data["dimensions"] == [2220, 2967] and data["objective_power"] == 20


@pytest.mark.data
def test_slide_info_without_mpp_says_to_pass_it() -> None:
    res = runner.invoke(app, ["slide", "info", str(shared("slides", "kidney-48-5-ihc.tif")), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["mpp"] is None and "--mpp" in data["mpp_problem"] and data["backend"] == "tifffile"


def test_slide_info_of_a_missing_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["slide", "info", str(tmp_path / "nope.svs")])
    assert res.exit_code == 1 and "no such file" in res.output


def test_tile_and_exit_codes(example_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["slide", "tile", str(example_slide), "--out", str(out), "--json", "-j", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and report["results"][0]["n_patches"] > 0
    assert json.loads((out / "errors.json").read_text()) == []
    bad = tmp_path / "bad.svs"
    bad.write_text("text")
    res = runner.invoke(app, ["slide", "tile", str(example_slide), str(bad), "--out", str(out), "-j", "1"])
    assert res.exit_code == 1
    assert "1 done, 1 failed" in res.output and "bad.svs: cannot read it" in res.output
    assert [e["slide"] for e in json.loads((out / "errors.json").read_text())] == ["bad"]


def test_tile_usage_errors(tmp_path: Path, example_slide: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["slide", "tile", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no slides" in res.output
    res = runner.invoke(app, ["slide", "tile", str(tmp_path / "missing.svs"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such file or folder" in res.output
    res = runner.invoke(app, ["slide", "tile", str(example_slide), "--out", str(tmp_path / "o"), "--overlap", "300"])
    assert res.exit_code == 2 and "overlap" in res.output
    res = runner.invoke(app, ["slide", "tile", str(example_slide), "--out", str(tmp_path / "o"), "--layout", "qupath"])
    assert res.exit_code == 2 and "clam, trident" in res.output


def test_a_missing_path_beside_a_good_slide_is_reported_not_fatal(example_slide: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["slide", "tile", str(example_slide), str(tmp_path / "gone.svs"),
                              "--out", str(tmp_path / "o"), "--json", "-j", "1"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["n_done"] == 1 and report["failures"][0]["message"].endswith("no such file or folder")


def test_mpp_override_from_the_cli(tmp_path: Path) -> None:
    from tests.helpers import tissue_image, write_pyramid

    slide = write_pyramid(tmp_path / "nompp.tiff", tissue_image(1024, 1024), mpp=None, downsamples=(1,))
    res = runner.invoke(app, ["slide", "tile", str(slide), "--out", str(tmp_path / "o"), "--json", "-j", "1"])
    assert res.exit_code == 1 and "--mpp" in json.loads(res.stdout)["failures"][0]["message"]
    res = runner.invoke(app, ["slide", "tile", str(slide), "--out", str(tmp_path / "o"), "--mpp", "0.5", "--json", "-j", "1"])
    assert res.exit_code == 0, res.output


def test_export_patches_cli(example_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(app, ["slide", "export-patches", str(example_slide), "--out", str(out), "--format", "jpeg",
                              "--container", "zip", "-j", "2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    r = report["results"][0]
    assert r["n_patches"] > 0 and r["output"].endswith("patches.zip")
    import zipfile

    with zipfile.ZipFile(r["output"]) as zf:
        assert len(zf.namelist()) == r["n_patches"]
        assert all(n.startswith("CMU-1-Small-Region_x") and n.endswith(".jpg") for n in zf.namelist())
