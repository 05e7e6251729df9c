"""Asking a slide model about a slide: ask_slide (preprocessing, evidence, heatmap, store reuse),
score_evidence against a hand computation, evidence_text, question-aware limits, bad input and
the CLI (`pathmllm slide ask` / `slide report`, `pathmllm bench run --suite slide-qa`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from pathmllm.cli.main import app  # noqa: E402
from pathmllm.models.hierarchy.pipeline import SlidePipelineSpec  # noqa: E402
from pathmllm.wsi.store import SlideStore  # noqa: E402
from tests.conftest import shared  # noqa: E402

pytestmark = pytest.mark.data

runner = CliRunner(env={"COLUMNS": "200"})

SPEC = {"encoder": "handcrafted", "region_size": 2, "max_cells_per_patch": 8}
PATCH_DIM = 20  # the handcrafted encoder's features
OPTIONS = ["lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 virtual slides (4x4 fields), their QA file, and stores prepared for all of them."""
    from pathmllm.data.virtual_slides import make_virtual_cohort
    from pathmllm.models.hierarchy.pipeline import prepare_slide

    tiles = shared("tiles", "lc25000-lung")
    tmp = tmp_path_factory.mktemp("ask-cohort")
    made = make_virtual_cohort(tiles, tmp / "cohort", 3, seed=0, prefix="t", grid=(4, 4))
    spec = SlidePipelineSpec(**SPEC)
    stores = tmp / "stores"
    for s in made.slides:
        prepare_slide(s.path, stores, spec, device="cpu")
    return {"slides": made.slides, "qa": made.qa_path, "stores": stores, "root": tmp}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random HierarchicalSlideLM over tiny-qwen2-lm, saved as `pathmllm train slide` saves one."""
    from pathmllm.models.hierarchy import HierarchyConfig
    from pathmllm.models.hierarchy.slide_lm import HierarchicalSlideLM
    from pathmllm.models.tiny_lm import build_tiny_lm

    llm, tok = build_tiny_lm(seed=0)
    torch.manual_seed(0)
    config = HierarchyConfig(cell_feature_dim=6, patch_feature_dim=PATCH_DIM, hidden_dim=32, num_heads=4,
                             ccaf_layers=1, region_layers=1, region_grid_size=2, llm_hidden_size=64,
                             num_slide_tokens=4, resampler_layers=1, resampler_heads=4)
    folder = tmp_path_factory.mktemp("slide-model") / "model"
    HierarchicalSlideLM(config, llm, tok).save_pretrained(folder)
    SlidePipelineSpec(**SPEC).save(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple:
    from pathmllm.models.hierarchy.ask import load_slide_model

    return load_slide_model(model_dir, device="cpu")


def _store_of(stores: Path, slide: Path, spec: SlidePipelineSpec) -> Path:
    from pathmllm.models.hierarchy.pipeline import store_dir

    return store_dir(stores, slide.stem, spec)


# ---------------------------------------------------------------------------------------- ask_slide


def test_ask_slide_prepares_a_fresh_slide_and_reuses_the_store(cohort: dict, loaded: tuple, tmp_path: Path) -> None:
    from PIL import Image

    from pathmllm.models.hierarchy.ask import ask_slide

    model, spec = loaded
    vs = cohort["slides"][0]
    stores = tmp_path / "fresh-stores"
    assert not stores.exists()
    heat = tmp_path / "heat" / "h.png"
    res = ask_slide(model, spec, vs.path, "What is the diagnosis?", stores, options=OPTIONS, heatmap=heat,
                    max_new_tokens=8, device="cpu")

    store = SlideStore.open(res.store)
    assert Path(res.store) == _store_of(stores, vs.path, spec)
    for stage in ("tissue", "patches", "cells", f"features_{spec.encoder}"):
        assert store.is_done(stage), stage
    assert isinstance(res.answer, str)

    width, height = vs.dimensions
    assert tuple(store.manifest()["slide"]["dimensions"]) == (width, height)
    regions = res.evidence.regions
    assert regions and [r["score"] for r in regions] == sorted((r["score"] for r in regions), reverse=True)
    for r in regions:
        assert 0 <= r["x"] and 0 <= r["y"] and r["width"] > 0 and r["height"] > 0
        assert r["x"] + r["width"] <= width and r["y"] + r["height"] <= height
        assert -1.0 <= r["score"] <= 1.0
    coords, _ = store.coords()
    rows = {tuple(map(int, c)) for c in coords}
    patches = res.evidence.patches
    assert patches and [p["score"] for p in patches] == sorted((p["score"] for p in patches), reverse=True)
    for p in patches:
        assert (p["x"], p["y"]) in rows
        assert tuple(coords[p["patch_index"]]) == (p["x"], p["y"])
    assert res.n_patches == len(res.evidence.patch_scores) == len(res.evidence.patch_coords)
    assert 0 < res.n_patches <= len(coords) and res.n_regions >= 1

    assert res.heatmap == str(heat) and heat.is_file()
    with Image.open(store.path(SlideStore.THUMBNAIL)) as thumb, Image.open(heat) as img:
        assert img.size == thumb.size

    d = res.to_dict()
    assert {"answer", "evidence", "heatmap", "store", "n_regions", "n_patches"} <= set(d)
    json.dumps(d)  # serialisable

    stages = {s: store.stage_info(s) for s in ("tissue", "patches", "cells", f"features_{spec.encoder}")}
    again = ask_slide(model, spec, vs.path, "What is the diagnosis?", stores, options=OPTIONS, max_new_tokens=8,
                      device="cpu")
    assert again.store == res.store
    assert {s: store.stage_info(s) for s in stages} == stages  # nothing was redone
    assert again.timings["prepare_s"] < res.timings["prepare_s"]
    assert again.answer == res.answer  # greedy decoding is deterministic


def test_score_evidence_matches_a_hand_computation(cohort: dict, loaded: tuple) -> None:
    from pathmllm.models.hierarchy.evidence import score_evidence
    from pathmllm.models.hierarchy.pipeline import read_hierarchy
    from pathmllm.models.hierarchy.store_batch import collate_hierarchy

    model, spec = loaded
    store = _store_of(cohort["stores"], cohort["slides"][1].path, spec)
    hierarchy = read_hierarchy(store, spec)
    batch = collate_hierarchy([hierarchy])
    with torch.no_grad():
        output = model.encoder(batch)
    text = torch.randn(model.config.llm_hidden_size, generator=torch.Generator().manual_seed(3))
    ev = score_evidence(hierarchy, output, text, top_regions=3, top_patches=4)

    tokens = output.tokens["patch"][0].numpy()
    n_slots = tokens.shape[0] // hierarchy.n_regions
    t = text.numpy().astype(np.float64)
    t /= np.linalg.norm(t)
    want, want_coords = [], []
    for j in range(hierarchy.n_regions):
        for q in range(len(hierarchy.patch_indices[j])):
            v = tokens[j * n_slots + q].astype(np.float64)
            want.append(float(v @ t / np.linalg.norm(v)))
            want_coords.append(hierarchy.patch_coords[j][q])
    assert len(ev.patch_scores) == sum(hierarchy.n_patches)
    np.testing.assert_allclose(ev.patch_scores, want, atol=1e-5)
    np.testing.assert_array_equal(ev.patch_coords, np.array(want_coords))

    order = np.argsort(-np.asarray(want), kind="stable")
    assert len(ev.patches) == min(4, len(want))
    best = ev.patches[0]
    assert best["score"] == pytest.approx(max(want), abs=1e-4)
    assert (best["x"], best["y"]) == tuple(int(c) for c in want_coords[order[0]])
    assert [p["score"] for p in ev.patches] == pytest.approx([want[i] for i in order[:4]], abs=1e-4)

    region_tok = output.tokens["region"][0, : hierarchy.n_regions].numpy().astype(np.float64)
    region_want = region_tok @ t / np.linalg.norm(region_tok, axis=1)
    assert [r["score"] for r in ev.regions] == pytest.approx(sorted(region_want, reverse=True)[:3], abs=1e-4)
    top = int(np.argmax(region_want))
    assert ev.regions[0]["region_index"] == int(hierarchy.region_ids[top])


def test_evidence_text_maps_letters_to_options() -> None:
    from pathmllm.models.hierarchy.ask import evidence_text

    opts = ["benign", "adenocarcinoma", "squamous cell carcinoma"]
    assert evidence_text("B", opts) == "adenocarcinoma"
    assert evidence_text("(c) because ...", opts) == "squamous cell carcinoma"
    assert evidence_text("Answer: A", opts) == "benign"
    assert evidence_text("tumour cells everywhere", opts) == "tumour cells everywhere"  # no option named
    assert evidence_text("tumour cells everywhere", None) == "tumour cells everywhere"
    assert evidence_text("B", None) == "B"


def test_limits_bound_what_ask_slide_reads(cohort: dict, loaded: tuple) -> None:
    from pathmllm.models.hierarchy.ask import ask_slide
    from pathmllm.models.hierarchy.pipeline import read_hierarchy

    model, base = loaded
    spec = SlidePipelineSpec(**SPEC, max_regions=2, max_patches_per_region=1)
    vs = cohort["slides"][2]
    full = read_hierarchy(_store_of(cohort["stores"], vs.path, base), base)
    assert full.n_regions > 2 and max(full.n_patches) > 1  # the limits bite on this slide
    res = ask_slide(model, spec, vs.path, "Where is the tumour?", cohort["stores"], max_new_tokens=4, device="cpu")
    assert 1 <= res.n_regions <= 2 and 1 <= res.n_patches <= 2
    assert len(res.evidence.patch_scores) == res.n_patches
    assert len(res.evidence.regions) <= 2 and len(res.evidence.patches) <= 2
    for r in res.evidence.regions:  # one patch per region: the box is that patch
        assert r["width"] == r["height"] == res.evidence.patch_size_level0


# ---------------------------------------------------------------------------------------- bad input


def test_a_question_too_long_fails_before_any_preprocessing(cohort: dict, loaded: tuple, tmp_path: Path) -> None:
    from pathmllm.models.hierarchy.ask import ask_slide

    model, spec = loaded
    stores = tmp_path / "never"
    with pytest.raises(ValueError, match="too long") as info:
        ask_slide(model, spec, cohort["slides"][0].path, "word " * 2000, stores, device="cpu")
    assert "context is 512" in str(info.value)
    assert not stores.exists()


@pytest.fixture(scope="module")
def blank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pathmllm.data.virtual_slides import write_pyramid_tiff

    path = tmp_path_factory.mktemp("blank") / "white.tiff"
    write_pyramid_tiff(path, np.full((1024, 1024, 3), 255, np.uint8), mpp=0.5)
    return path


def test_a_slide_without_tissue_says_so(blank: Path, loaded: tuple, tmp_path: Path) -> None:
    from pathmllm.models.hierarchy.ask import ask_slide
    from pathmllm.wsi.errors import NoTissueError

    model, spec = loaded
    with pytest.raises((NoTissueError, ValueError), match="no tissue"):
        ask_slide(model, spec, blank, "What is the diagnosis?", tmp_path / "s", device="cpu")


def test_a_model_folder_without_a_spec(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.hierarchy.ask import load_slide_model

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "pathmllm_slide.json").unlink()
    with pytest.raises(CheckpointError, match="pathmllm_slide.json"):
        load_slide_model(bare, device="cpu")


def test_a_store_without_cells_names_the_command(cohort: dict, tmp_path: Path) -> None:
    import shutil

    from pathmllm.models.hierarchy.pipeline import read_hierarchy
    from pathmllm.models.hierarchy.store_batch import StoreStageMissingError

    spec = SlidePipelineSpec(**SPEC)
    src = _store_of(cohort["stores"], cohort["slides"][0].path, spec)
    dst = tmp_path / "stores" / src.parent.name / src.name
    shutil.copytree(src, dst)
    store = SlideStore.open(dst)
    m = store.manifest()
    del m["stages"]["cells"]
    store._write_manifest(m)
    shutil.rmtree(dst / "cells")
    with pytest.raises(StoreStageMissingError, match="pathmllm slide cells"):
        read_hierarchy(dst, spec)


def test_prepare_slides_reports_a_corrupt_file_and_goes_on(cohort: dict, tmp_path: Path) -> None:
    from pathmllm.models.hierarchy.pipeline import prepare_slides

    bad = tmp_path / "x.tiff"
    bad.write_bytes(b"not a tiff")
    spec = SlidePipelineSpec(**SPEC)
    good = cohort["slides"][0].path
    threads = torch.get_num_threads()
    try:
        done, problems = prepare_slides([good, bad], cohort["stores"], spec, workers=1)
    finally:
        torch.set_num_threads(threads)
    assert done == [_store_of(cohort["stores"], good, spec)]
    assert len(problems) == 1 and "x.tiff" in problems[0]


def test_prepare_slides_in_process_keeps_the_callers_torch_threads(tmp_path: Path) -> None:
    from pathmllm.models.hierarchy.pipeline import prepare_slides

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, problems = prepare_slides([tmp_path / "missing.tiff"], tmp_path / "s", SlidePipelineSpec(**SPEC), workers=1)
        assert len(problems) == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- CLI


def test_cli_slide_ask_json(cohort: dict, model_dir: Path) -> None:
    vs = cohort["slides"][1]
    res = runner.invoke(app, ["slide", "ask", str(vs.path), "What is the diagnosis?", "--option", "a", "--option",
                              "b", "-m", str(model_dir), "-o", str(cohort["stores"]), "--json", "--device", "cpu",
                              "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"answer", "evidence", "heatmap"} <= set(data)
    assert data["options"] == ["a", "b"] and data["question"] == "What is the diagnosis?"
    assert data["evidence"]["regions"] and data["evidence"]["patches"]
    heat = Path(data["heatmap"])
    assert heat.is_file() and heat == Path(data["store"]) / "evidence_heatmap.png"


def test_cli_slide_report_asks_the_report_question(cohort: dict, model_dir: Path, tmp_path: Path) -> None:
    vs = cohort["slides"][1]
    heat = tmp_path / "r.png"
    res = runner.invoke(app, ["slide", "report", str(vs.path), "-m", str(model_dir), "-o", str(cohort["stores"]),
                              "--json", "--device", "cpu", "--max-new-tokens", "8", "--heatmap", str(heat)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["question"] == SlidePipelineSpec().report_question
    assert data["options"] is None and Path(data["heatmap"]) == heat and heat.is_file()


def test_cli_slide_ask_without_tissue_exits_2(blank: Path, model_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["slide", "ask", str(blank), "What is the diagnosis?", "-m", str(model_dir),
                              "-o", str(tmp_path / "s"), "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "no tissue" in res.output and "Traceback" not in res.output


def test_cli_slide_ask_usage_errors(cohort: dict, model_dir: Path, tmp_path: Path) -> None:
    vs = cohort["slides"][0]
    res = runner.invoke(app, ["slide", "ask", str(tmp_path / "nope.tiff"), "q", "-m", str(model_dir),
                              "-o", str(tmp_path / "s")])
    assert res.exit_code == 2 and "no such slide file" in res.output
    res = runner.invoke(app, ["slide", "ask", str(vs.path), "q", "-m", str(tmp_path), "-o", str(tmp_path / "s")])
    assert res.exit_code == 2 and "pathmllm_slide.json" in res.output
    res = runner.invoke(app, ["slide", "ask", str(vs.path), "word " * 2000, "-m", str(model_dir),
                              "-o", str(tmp_path / "s2"), "--device", "cpu"])
    assert res.exit_code == 2 and "too long" in res.output
    assert not (tmp_path / "s2").exists()


def test_cli_bench_slide_qa(cohort: dict, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "run", "--suite", "slide-qa", "-m", str(model_dir), "--qa", str(cohort["qa"]),
                              "--stores", str(cohort["stores"]), "--out", str(out), "--device", "cpu",
                              "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    path = out / f"{model_dir.name}-slide-qa.json"
    assert path.is_file()
    data = json.loads(path.read_text())
    assert data["n_questions"] == 6 and data["n_closed"] == 3 and data["skipped"] == []
    assert 0.0 <= data["closed_accuracy"] <= 1.0
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "meteor"):
        assert 0.0 <= data["open"][k] <= 1.0, k
    assert 0.0 <= data["report_to_slide"]["recall@1"] <= 1.0 and data["report_to_slide"]["n"] == 3
    assert len(data["rows"]) == 6

    res = runner.invoke(app, ["bench", "run", "--suite", "slide-qa", "-m", str(model_dir),
                              "--stores", str(cohort["stores"]), "--out", str(out)])
    assert res.exit_code == 2 and "--qa" in res.output
