"""Virtual slides from LC25000 tiles: readable pyramid at 0.5 µm/px, right pixels and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathmllm.data.slide_qa import read_slide_qa, resolve_slide
from pathmllm.data.virtual_slides import (
    BACKGROUND,
    make_virtual_cohort,
    make_virtual_slide,
    read_tile_groups,
)
from tests.conftest import shared

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def tiles() -> list[tuple[Path, str, str]]:
    return read_tile_groups(shared("tiles", "lc25000-lung"))


def test_virtual_slide_reads_back(tmp_path: Path, tiles: list[tuple[Path, str, str]]) -> None:
    from pathmllm.wsi.reader import Slide

    rng = np.random.default_rng(0)
    paths, labels = [t[0] for t in tiles[::10]], [t[1] for t in tiles[::10]]
    vs = make_virtual_slide(tmp_path / "v.tiff", paths, labels, "lung_scc", rng, grid=(6, 6))
    lab = vs.label_map()
    assert lab.shape == (6, 6)
    counts = vs.class_counts()
    assert counts[BACKGROUND] == 7 and counts["lung_scc"] == 22 and sum(counts.values()) == 36
    assert max((c for c in counts if c != BACKGROUND), key=counts.__getitem__) == "lung_scc"
    assert vs.level_downsamples == (1, 4)
    with Slide(vs.path) as s:
        assert s.dimensions == (1536, 1536)
        assert s.mpp == pytest.approx(0.5, rel=1e-3)
        for r in range(6):
            for c in range(6):
                x, y, w, h = vs.cell_box(r, c)
                got = s.read_region((x, y), 0, (w, h)).astype(float)
                if lab[r, c] == BACKGROUND:
                    assert got.min() > 245
                    continue
                src = Image.open(vs.cell_sources[r][c]).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC)
                assert np.abs(got - np.asarray(src, float)).mean() < 6  # JPEG
                assert vs.cell_sources[r][c].split("/")[-2] == lab[r, c]
    q = vs.questions[0]
    assert q["options"] == ["lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma"]
    assert q["answer"] == "C" and "squamous" in vs.report


def test_cohort_roundtrip_and_tiling(tmp_path: Path, tiles: list[tuple[Path, str, str]]) -> None:
    from pathmllm.wsi.pipeline import tile_slide

    groups = sorted({t[2] for t in tiles})[::4]
    cohort = make_virtual_cohort(shared("tiles", "lc25000-lung"), tmp_path / "c", 3, groups=groups, seed=1,
                                 grid=(4, 5))
    assert [s.major_class for s in cohort.slides] == ["lung_aca", "lung_n", "lung_scc"]
    used = {src for s in cohort.slides for row in s.cell_sources for src in row if src}
    allowed = {str(t[0]) for t in tiles if t[2] in set(groups)}
    assert used <= allowed
    records, problems = read_slide_qa(cohort.qa_path)
    assert not problems and len(records) == 6
    assert records == [r for s in cohort.slides for r in s.records()]
    slides = {s.slide_id: s.path for s in cohort.slides}
    assert resolve_slide(records[2], slides) == cohort.slides[1].path
    assert records[0].answer_text == "lung adenocarcinoma" and records[1].is_report
    assert len(cohort.labels_path.read_text().splitlines()) == 1 + 3 * 20
    res = tile_slide(cohort.slides[0].path, tmp_path / "tiles")
    lab = cohort.slides[0].label_map()
    assert res.status == "done" and 0 < res.n_patches <= 20
    assert res.n_patches >= (lab != BACKGROUND).sum() - 2
