"""MeCoVQA reader (FORMATS.md §4), masks, box/point prompts and the Kvasir-SEG converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathmllm.data.mecovqa import (
    GroundingRecord,
    box_mask,
    build_merged_masks,
    kvasir_split,
    kvasir_to_mecovqa,
    load_mask,
    modality_of,
    point_mask,
    read_mecovqa,
)
from tests.conftest import shared

CT = "ct_00--KiTS19--case_00002--z_0227"
XR = "x_ray--ChestX--case_01--2d_none"
MR = "mr_t1--BraTS--case_07--z_0080"


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A SAMed2Dv1-style root with images, instance masks, and a llavamed image beside it."""
    root = tmp_path / "SAMed2Dv1"
    _png(root / "images" / f"{CT}.png", np.full((40, 60), 90))  # grayscale, non-square (H=40, W=60)
    _png(root / "images" / f"{XR}.png", np.full((32, 32, 3), 50))
    _png(root / "images" / f"{MR}.png", np.full((40, 60), 10))
    a = np.zeros((40, 60))
    a[5:10, 5:10] = 1  # 0/1 instance
    b = np.zeros((40, 60))
    b[20:30, 40:50] = 255  # 0/255 instance
    _png(root / "masks" / f"{CT}--0003_000.png", a)
    _png(root / "masks" / f"{CT}--0003_001.png", b)
    _png(root / "masks" / f"{CT}--0005_000.png", b)
    region = np.zeros((32, 32))
    region[3:8, 10:20] = 1
    _png(root / "masks" / f"{XR}--0001_000.png", region)
    _png(root / "masks" / f"{MR}--0002_000.png", np.ones((10, 10)))  # wrong size for MR
    _png(tmp_path / "llavamed" / "images" / "pmc_1.png", np.full((16, 16, 3), 200))
    return root


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


def _conv(q: object, a: object) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def test_read_mecovqa_quirks(tree: Path, tmp_path: Path) -> None:
    absolute = str(tree / "images" / f"{CT}.png")
    records = [
        # 0: C, path without .png, <image> in the middle, value a number
        {"image": f"images/{CT}", "conversations": _conv("What organ <image> is shown?", 42), "answer_type": "open",
         "id": "c-1", "whatever": [1, 2]},
        # 1: R, x_ray modality, leading system turn dropped
        {"image": f"images/{XR}.png", "answer_type": "closed", "conversations": [
            {"from": "system", "value": "be nice"},
            {"from": "human", "value": f"<image>\nIs this region abnormal? <region>masks/{XR}--0001_000.png</region>"},
            {"from": "gpt", "value": "No"}]},
        # 2: G, masks_merged built from masks/, absolute image path
        {"image": absolute, "conversations": _conv("<image>\nSegment the kidney.",
                                                   f"Here it is <SEG><mask>masks_merged/{CT}--0003_merged.png</mask>")},
        # 3: from "bot": skipped
        {"image": f"images/{CT}.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "bot", "value": "a"}]},
        # 4: <mask> without <SEG>: skipped with a clear reason
        {"image": f"images/{CT}.png", "conversations": _conv("<image>\nSegment.", f"<mask>masks/{CT}--0003_000.png</mask>")},
        # 5: missing image
        {"image": "images/nope--x--y--z_1", "conversations": _conv("<image>\nq", "a")},
        # 6: missing mask
        {"image": f"images/{CT}.png", "conversations": _conv("<image>\nSegment.", "<SEG><mask>masks/absent.png</mask>")},
        # 7: llavamed path resolves against the parent of the image root
        {"image": "llavamed/images/pmc_1", "conversations": _conv("<image>\nDescribe.", "A figure.")},
        # 8: <SEG> without <mask>: kept (inference only), noted
        {"image": f"images/{CT}.png", "conversations": _conv("<image>\nSegment the kidney.", "<SEG>")},
        # 9: two regions in one turn: skipped
        {"image": f"images/{XR}.png", "conversations": _conv(
            f"<image> <region>masks/{XR}--0001_000.png</region> and <region>masks/{XR}--0001_000.png</region>", "Yes")},
        # 10: not an object
        ["not", "a", "record"],
        # 11: no conversations
        {"image": f"images/{CT}.png"},
    ]
    path = _write(tmp_path / "MeCoVQA_test.json", records)
    recs, problems = read_mecovqa(path, tree)
    by_index = {r.index: r for r in recs}
    assert sorted(by_index) == [0, 1, 2, 7, 8]
    assert all(isinstance(r, GroundingRecord) for r in recs)

    c = by_index[0]
    assert c.image == tree / "images" / f"{CT}.png"
    assert c.question == "What organ is shown?" and c.answer == "42"
    assert c.modality == "ct" and c.answer_type == "open" and c.meta["id"] == "c-1"
    assert c.region_mask is None and c.target_mask is None and not c.has_seg and c.task == "vqa"

    r = by_index[1]
    assert r.modality == "xray" and r.answer_type == "closed" and r.task == "region"
    assert r.question == "Is this region abnormal? <region></region>"
    assert r.region_mask == tree / "masks" / f"{XR}--0001_000.png"
    assert r.meta["dropped_turn"] == "system"

    g = by_index[2]
    assert g.image == Path(absolute) and g.has_seg and g.answer == "Here it is <SEG>" and g.task == "grounding"
    assert g.target_mask == tree / "masks_merged" / f"{CT}--0003_merged.png"
    merged = load_mask(g.target_mask, (40, 60))
    assert merged.sum() == 25 + 100 and merged[7, 7] and merged[25, 45]  # union of the 0/1 and 0/255 instances
    assert np.unique(np.asarray(Image.open(g.target_mask))).tolist() == [0, 255]

    assert by_index[7].image == tmp_path / "llavamed" / "images" / "pmc_1.png"
    assert by_index[8].has_seg and by_index[8].target_mask is None and by_index[8].answer == "<SEG>"

    skipped = {p.index: p for p in problems if p.skipped}
    assert sorted(skipped) == [3, 4, 5, 6, 9, 10, 11]
    assert "'bot'" in skipped[3].reason
    assert "<mask> but no <SEG>" in skipped[4].reason
    assert "nope--x--y--z_1.png" in skipped[5].reason and "tried" in skipped[5].reason
    assert "absent.png" in skipped[6].reason
    assert "2 <region>" in skipped[9].reason
    assert str(path) in str(skipped[4]) and f":{skipped[4].line}" in str(skipped[4])
    assert 1 < skipped[3].line < skipped[4].line < skipped[5].line
    notes = [p for p in problems if not p.skipped]
    assert [p.index for p in notes] == [8] and "inference" in notes[0].reason


def test_read_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_mecovqa(tmp_path / "absent.json", tmp_path)


def test_no_build_and_check_masks(tree: Path, tmp_path: Path) -> None:
    records = [
        {"image": f"images/{CT}.png", "conversations": _conv("<image>\nSeg.", f"<SEG><mask>masks_merged/{CT}--0005_merged.png</mask>")},
        {"image": f"images/{MR}.png", "conversations": _conv("<image>\nSeg.", f"<SEG><mask>masks/{MR}--0002_000.png</mask>")},
    ]
    path = _write(tmp_path / "g.json", records)
    recs, problems = read_mecovqa(path, tree, build_merged=False)
    assert [r.index for r in recs] == [1] and not (tree / "masks_merged").exists()
    assert "not found" in problems[0].reason
    recs, problems = read_mecovqa(path, tree, check_masks=True)
    assert [r.index for r in recs] == [0]
    assert [p.index for p in problems] == [1] and "mask is 10x10 but the image is 60x40" in problems[0].reason
    assert recs[0].modality == "ct"


def test_load_mask_rules(tmp_path: Path) -> None:
    m01 = np.zeros((4, 6))
    m01[1, 2] = 1
    assert load_mask(_png(tmp_path / "a.png", m01)).sum() == 1
    m255 = np.zeros((4, 6, 3))
    m255[3, 5] = 255
    got = load_mask(_png(tmp_path / "b.png", m255), (4, 6))
    assert got.dtype == bool and got.shape == (4, 6) and got[3, 5] and got.sum() == 1
    with pytest.raises(ValueError, match="mask is 6x4 but the image is 4x6"):
        load_mask(tmp_path / "b.png", (6, 4))
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "c.png")


def test_build_merged_masks_idempotent(tree: Path) -> None:
    assert build_merged_masks(tree) == 4  # CT 0003 (two instances), CT 0005, XR 0001, MR 0002
    assert build_merged_masks(tree) == 0
    names = sorted(p.name for p in (tree / "masks_merged").iterdir())
    assert f"{CT}--0003_merged.png" in names and f"{CT}--0005_merged.png" in names
    assert not any(n.startswith(".") for n in names)  # no temporary files left


def test_modality_of() -> None:
    assert modality_of(f"images/{CT}.png") == "ct"
    assert modality_of(f"images/{XR}.png") == "xray"
    assert modality_of("images/endoscopy_00--Kvasir--x--2d_none.png") == "endoscopy"


def test_box_mask_orientation_and_errors() -> None:
    m = box_mask([10, 2, 29, 5], (8, 40))  # x = columns 10..29, y = rows 2..5, inclusive; off-diagonal
    assert m.shape == (8, 40) and m.sum() == 20 * 4
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 5, 10, 29)
    assert box_mask([3, 3, 3, 3], (5, 5)).sum() == 1
    with pytest.raises(ValueError, match="inverted"):
        box_mask([5, 2, 4, 3], (10, 10))
    with pytest.raises(ValueError, match="outside"):
        box_mask([0, 0, 40, 5], (8, 40))
    with pytest.raises(ValueError, match="outside"):
        box_mask([-1, 0, 3, 3], (8, 40))


def test_point_mask() -> None:
    m = point_mask((30, 5), (50, 100))  # x = col 30, y = row 5
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 25, 10, 50)
    assert point_mask((50, 25), (100, 100)).sum() == 41 * 41
    assert point_mask((2, 3), (10, 10), radius=1).sum() == 9
    with pytest.raises(ValueError, match="outside"):
        point_mask((100, 5), (50, 100))


# -------------------------------------------------------------------------------- Kvasir-SEG (real data)
def _bbox_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return out


def test_kvasir_to_mecovqa(tmp_path: Path) -> None:
    root = shared("grounding", "kvasir-seg")
    out = kvasir_to_mecovqa(root, tmp_path / "kvasir" / "test.json", split="test", limit=40)
    recs, problems = read_mecovqa(out, root, check_masks=True)
    assert not problems
    assert {r.modality for r in recs} == {"endoscopy"} and {r.meta["split"] for r in recs} == {"test"}
    seg = [r for r in recs if r.task == "grounding"]
    assert len(seg) == 40 and all(r.answer == "<SEG>" and r.question == "Segment the polyp." for r in seg)
    assert all(r.image.parent == root / "images" for r in recs)
    polyp = {r.meta["id"].split("-")[1]: load_mask(r.target_mask, (256, 256)) for r in seg}
    regions = [r for r in recs if r.task == "region"]
    yes = [r for r in regions if r.answer == "Yes"]
    no = [r for r in regions if r.answer == "No"]
    assert len(yes) == 40 and 0 < len(no) <= 40 and all(r.answer_type == "closed" for r in regions)
    assert all(r.question == "Is there a polyp in this region? <region></region>" for r in regions)
    ious = []
    for r in yes:
        box = load_mask(r.region_mask, (256, 256))
        ref = _bbox_of(polyp[r.meta["id"].split("-")[1]])
        ious.append((box & ref).sum() / (box | ref).sum())
    assert np.mean(np.array(ious) > 0.5) >= 0.9, ious
    for r in no:
        box = load_mask(r.region_mask, (256, 256))
        stem = r.meta["id"].split("-")[1]
        grown = np.zeros_like(box)
        ys, xs = np.nonzero(box)
        grown[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2] = True
        assert not (grown & polyp[stem]).any()  # neither overlaps nor touches the polyp
        same = next(y for y in yes if y.meta["id"].split("-")[1] == stem)
        assert box.sum() == load_mask(same.region_mask).sum()  # same size as the polyp box


def test_kvasir_split_disjoint_deterministic(tmp_path: Path) -> None:
    root = shared("grounding", "kvasir-seg")
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    a, b = kvasir_split(stems, 0.3, seed=0), kvasir_split(list(reversed(stems)), 0.3, seed=0)
    assert a == b and sum(v == "test" for v in a.values()) == 120
    assert kvasir_split(stems, 0.3, seed=1) != a
    train = kvasir_to_mecovqa(root, tmp_path / "train.json", split="train", region_questions=False, limit=5)
    test = kvasir_to_mecovqa(root, tmp_path / "test.json", split="test", region_questions=False, limit=5)
    ids = [{r["id"] for r in json.loads(p.read_text())} for p in (train, test)]
    assert len(ids[0]) == len(ids[1]) == 5 and not ids[0] & ids[1]
    assert all(a[i.split("-")[1]] == "train" for i in ids[0])
    again = kvasir_to_mecovqa(root, tmp_path / "again.json", split="train", region_questions=False, limit=5)
    assert json.loads(again.read_text()) == json.loads(train.read_text())


def test_data_kvasir_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    root = shared("grounding", "kvasir-seg")
    out = tmp_path / "k" / "mecovqa.json"
    result = CliRunner().invoke(app, ["data", "kvasir", str(root), str(out), "--split", "train", "--limit", "5"])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert sum(r["id"].endswith("-seg") for r in records) == 5 and {r["split"] for r in records} == {"train"}
    assert "5 seg" in result.output and str(out) in result.output
    # a folder that is not Kvasir-SEG, and a bad split: exit 2 with the reason
    bad = CliRunner().invoke(app, ["data", "kvasir", str(tmp_path), str(out)])
    assert bad.exit_code == 2 and "no images" in bad.output
    bad = CliRunner().invoke(app, ["data", "kvasir", str(root), str(out), "--split", "val"])
    assert bad.exit_code == 2 and "split" in bad.output
