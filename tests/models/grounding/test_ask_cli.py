"""`pathmllm ask` / `pathmllm ground`: region prompts, mask outputs, slides, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathmllm.cli.main import app
from pathmllm.models.grounding import prompting
from pathmllm.models.grounding.model import GroundingLM

runner = CliRunner(env={"COLUMNS": "200"})
H, W = 60, 80


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.grounding.seg import MaskDecoderWrapper, build_tiny_sam

    torch.manual_seed(0)
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    m = GroundingLM(bb, MaskDecoderWrapper(build_tiny_sam()))
    folder = tmp_path_factory.mktemp("ground") / "model"
    m.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "cells.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the model is loaded."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(GroundingLM, "from_pretrained", classmethod(boom))


def _fake(monkeypatch: pytest.MonkeyPatch, masks: torch.Tensor | None, text: str = "here <SEG>") -> list[dict]:
    """Replace loading and generation; record what generate was given."""
    calls: list[dict] = []

    class Fake:
        def generate(self, img: np.ndarray, prompt: str, region_mask: np.ndarray | None = None,
                     max_new_tokens: int = 32) -> tuple[str, torch.Tensor | None]:
            calls.append({"image": np.array(img), "prompt": prompt, "region": region_mask})
            return text, masks

    monkeypatch.setattr(GroundingLM, "from_pretrained", classmethod(lambda cls, *a, **k: Fake()))
    return calls


def _rect(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# ------------------------------------------------------------------------------ real tiny model
def test_ask_with_real_tiny_model(model_dir: Path, image: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["ask", str(image), "what is in <region>?", "--model", str(model_dir), "--box",
                              "10,10,40,30", "--device", "cpu", "--max-new-tokens", "3", "--json",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert isinstance(info["answer"], str)
    assert info["region"]["kind"] == "box" and info["region"]["pixels"] == 30 * 20
    assert info["image"] == str(image)
    if not info["grounded"]:  # a random model rarely writes <SEG>
        assert info["masks"] == [] and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ mask outputs
def test_ask_writes_mask_and_overlay(monkeypatch: pytest.MonkeyPatch, image: Path, tmp_path: Path) -> None:
    a, b = _rect(H, W, 5, 15, 5, 25), _rect(H, W, 30, 50, 40, 70)
    calls = _fake(monkeypatch, torch.as_tensor(np.stack([a, b])))
    res = runner.invoke(app, ["ask", str(image), "segment the cell at <region>", "--model", "x", "--point",
                              "50,40", "--radius", "5", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["answer"] == "here <SEG>" and info["grounded"]
    assert info["masks"] == [str(tmp_path / f"cells_mask{s}.png") for s in ("", "_0", "_1")]
    assert info["mask_pixels"] == int((a | b).sum())
    assert info["region"] == {"kind": "point", "x": 50.0, "y": 40.0, "radius": 5, "pixels": int(calls[0]["region"].sum())}
    assert info["geojson"] is None
    reg = calls[0]["region"]
    assert reg.shape == (H, W) and reg[40, 50] and reg[40, 55] and not reg[35, 55]  # a disk, not a square
    union = np.asarray(Image.open(tmp_path / "cells_mask.png"))
    assert union.dtype == np.uint8 and set(np.unique(union)) == {0, 255}
    assert np.array_equal(union == 255, a | b)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cells_mask_1.png")) == 255, b)
    ov = np.asarray(Image.open(tmp_path / "cells_overlay.png"))
    src = np.asarray(Image.open(image).convert("RGB"))
    assert ov.shape == (H, W, 3)
    assert np.array_equal(ov[0, 79], src[0, 79])  # untouched
    assert not np.array_equal(ov[10, 10], src[10, 10])  # tinted
    assert tuple(ov[40, 45]) == (255, 220, 0)  # region outline (left edge of the disk)


def test_ask_plain_text(monkeypatch: pytest.MonkeyPatch, image: Path, tmp_path: Path) -> None:
    calls = _fake(monkeypatch, None, text="an adenoma")
    res = runner.invoke(app, ["ask", str(image), "what is this?", "--model", "x", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "an adenoma"
    assert calls[0]["region"] is None and not list(tmp_path.iterdir())


@pytest.mark.parametrize("opt", ["mask", "polygon"])
def test_mask_and_polygon_regions(monkeypatch: pytest.MonkeyPatch, image: Path, tmp_path: Path, opt: str) -> None:
    calls = _fake(monkeypatch, None, text="ok")
    if opt == "mask":
        m = _rect(H, W, 10, 20, 30, 50)
        Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "m.png")
        args = ["--mask", str(tmp_path / "m.png")]
    else:
        m = None
        args = ["--polygon", "10,10 40,10 40,30"]
    res = runner.invoke(app, ["ask", str(image), "what is this?", "--model", "x", *args])
    assert res.exit_code == 0, res.output
    reg = calls[0]["region"]
    if m is not None:
        assert np.array_equal(reg, m)
    else:
        assert reg[12, 38] and not reg[28, 12]


def test_ground_no_seg_exits_1(monkeypatch: pytest.MonkeyPatch, image: Path, tmp_path: Path) -> None:
    calls = _fake(monkeypatch, None, text="I see no polyp")
    res = runner.invoke(app, ["ground", str(image), "segment the polyp", "--model", "x", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "no <SEG>" in res.stderr and "no mask" in res.stderr
    assert calls[0]["region"] is None
    assert not list(tmp_path.iterdir())


def test_ground_writes_mask(monkeypatch: pytest.MonkeyPatch, image: Path, tmp_path: Path) -> None:
    a = _rect(H, W, 5, 15, 5, 25)
    _fake(monkeypatch, torch.as_tensor(a[None]))
    res = runner.invoke(app, ["ground", str(image), "segment the polyp", "--model", "x", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells_mask.png", "cells_overlay.png"]


# ------------------------------------------------------------------------------ slides
def test_slide_window_and_geojson(monkeypatch: pytest.MonkeyPatch, pyramid: Path, tmp_path: Path) -> None:
    # pyramid: 2048x1536 at 0.25 µm/px, levels (1, 4, 16); --mpp 1 → 4 level-0 px per window px (level 1)
    pred = _rect(100, 100, 10, 20, 20, 40)
    calls = _fake(monkeypatch, torch.as_tensor(pred[None]))
    res = runner.invoke(app, ["ask", str(pyramid), "what is in <region>?", "--model", "x", "--box", "400,300,600,500",
                              "--mpp", "1", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    # window = box ± 0.5 × 200 px = [300, 700) × [200, 600) → 100 × 100 px
    assert info["window"]["x"] == 300 and info["window"]["y"] == 200
    assert info["window"]["width"] == 400 and info["window"]["level"] == 1
    img, reg = calls[0]["image"], calls[0]["region"]
    assert img.shape == (100, 100, 3)
    assert np.array_equal(reg, _rect(100, 100, 25, 75, 25, 75))
    from pathmllm.wsi.reader import open_slide

    with open_slide(pyramid) as s:
        expect = s.read_region((300, 200), 1, (100, 100))
    assert np.array_equal(img, expect)
    gj = json.loads((tmp_path / "pyramid_mask.geojson").read_text())
    assert info["geojson"] == str(tmp_path / "pyramid_mask.geojson")
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 1
    feat = gj["features"][0]
    assert feat["properties"]["objectType"] == "annotation"
    rings = feat["geometry"]["coordinates"]
    assert feat["geometry"]["type"] == "MultiPolygon" and len(rings) == 1 and len(rings[0]) == 1
    pts = np.array(rings[0][0])
    assert np.array_equal(pts[0], pts[-1])
    # window rows 10..19, cols 20..39 → level-0 x in [300+80, 300+160], y in [200+40, 200+80]
    assert pts[:, 0].min() == pytest.approx(380) and pts[:, 0].max() == pytest.approx(460)
    assert pts[:, 1].min() == pytest.approx(240) and pts[:, 1].max() == pytest.approx(280)
    assert (tmp_path / "pyramid_mask.png").exists() and (tmp_path / "pyramid_overlay.png").exists()
    # QuPath reads it (the shared independent checker, FORMATS.md)
    import subprocess
    import sys

    from tests.conftest import SHARED_TOOLS

    script = SHARED_TOOLS / "qupath_geojson_check.py"
    if script.exists():
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "pyramid_mask.geojson"),
                              "--width", "2048", "--height", "1536"], capture_output=True, text=True)
        assert out.returncode == 0 and "VERDICT: PASS" in out.stdout, out.stdout + out.stderr


def test_ground_on_slide(monkeypatch: pytest.MonkeyPatch, pyramid: Path, tmp_path: Path) -> None:
    calls = _fake(monkeypatch, torch.as_tensor(_rect(50, 50, 0, 50, 0, 50)[None]))
    res = runner.invoke(app, ["ground", str(pyramid), "segment the tissue", "--model", "x", "--box",
                              "400,300,600,500", "--mpp", "1", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert calls[0]["region"] is None and calls[0]["image"].shape == (50, 50, 3)  # no context for ground
    pts = np.array(json.loads((tmp_path / "pyramid_mask.geojson").read_text())["features"][0]["geometry"]
                   ["coordinates"][0][0])
    assert pts.min(0).tolist() == [400, 300] and pts.max(0).tolist() == [600, 500]


def test_geojson_holes() -> None:
    m = _rect(30, 30, 5, 25, 5, 25)
    m[10:20, 10:20] = False
    gj = prompting.mask_geojson(m[None])
    (poly,) = gj["features"][0]["geometry"]["coordinates"]
    assert len(poly) == 2  # outer ring + one hole
    hole = np.array(poly[1])
    assert hole[:, 0].min() == pytest.approx(10) and hole[:, 0].max() == pytest.approx(20)


def test_svs_is_a_slide(example_slide: Path) -> None:
    inp = prompting.load_input(example_slide)
    assert inp.is_slide and inp.name == "CMU-1-Small-Region"
    inp.slide.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "400,300,600,500", "--mpp", "1", "--slide-mpp", "500"], "--slide-mpp"),
        (["--point", "10,10", "--mpp", "1"], "--point is not supported on slides"),
        (["--mpp", "1"], "on a slide, give --box in level-0 pixels"),
        (["--box", "400,300,600,500"], "give --mpp"),
        (["--box", "0,0,2048,1536", "--mpp", "0.1"], "smaller --box"),
        (["--box", "2000,300,2100,500", "--mpp", "1"], "outside the 2048x1536"),
    ],
)
def test_slide_bad_input(no_model: None, pyramid: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["ask", str(pyramid), "what?", "--model", "x", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr


# ------------------------------------------------------------------------------ bad input
def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    empty = tmp / "empty.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(empty)
    wrong = tmp / "wrong.png"
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(wrong)
    return [
        (["--point", "90,10"], "outside the 80x60"),
        (["--point", "a,b"], "--point 'a,b' is malformed"),
        (["--box", "10,10,90,20"], "reaches outside the 80x60"),
        (["--box", "30,10,20,20"], "X1 > X0"),
        (["--box", "30,10,30,20"], "X1 > X0"),
        (["--box", "1,2,3"], "give 4 numbers"),
        (["--mask", str(empty)], "is empty"),
        (["--mask", str(wrong)], "12x10 but the image is 80x60"),
        (["--mask", str(tmp / "nope.png")], "no such mask file"),
        (["--polygon", "1,2 3,4"], "at least 3"),
        (["--polygon", "1,2 3 5,6"], "malformed"),
        (["--box", "1,1,5,5", "--point", "2,2"], "at most one region prompt; got --point and --box"),
    ]


def test_bad_region_input(no_model: None, image: Path, tmp_path: Path) -> None:
    for args, message in _bad_cases(tmp_path):
        res = runner.invoke(app, ["ask", str(image), "what is <region>?", "--model", "x", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (args, res.stderr)


def test_unreadable_image(no_model: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    res = runner.invoke(app, ["ask", str(bad), "what?", "--model", "x"])
    assert res.exit_code == 2 and "cannot read it as an image" in res.stderr
    res = runner.invoke(app, ["ask", str(tmp_path / "missing.png"), "what?", "--model", "x"])
    assert res.exit_code == 2 and "no such image" in res.stderr


def test_region_marker_without_region(no_model: None, image: Path) -> None:
    res = runner.invoke(app, ["ask", str(image), "what is in <region>?", "--model", "x"])
    assert res.exit_code == 2 and "no region was given" in res.stderr


def test_not_a_grounding_model(image: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["ask", str(image), "what?", "--model", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2
    assert "not a usable grounding model" in res.stderr and "grounding.json is missing" in res.stderr
    res = runner.invoke(app, ["ground", str(image), "segment", "--model", str(tmp_path / "none"), "--device", "cpu"])
    assert res.exit_code == 2 and "no grounding model folder" in res.stderr
