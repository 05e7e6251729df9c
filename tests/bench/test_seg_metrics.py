"""Segmentation metrics and token F1, against hand counts, sklearn, and manual loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from pathmllm.bench.seg_metrics import (
    SegmentationScores,
    binarize,
    dice_iou,
    mean_token_f1,
    token_f1,
)


def test_dice_iou_hand_counts() -> None:
    pred = np.zeros((10, 12), bool)
    target = np.zeros((10, 12), bool)
    pred[0:4, 0:5] = True  # 20 px
    target[2:6, 0:5] = True  # 20 px, overlap rows 2-3 -> 10 px
    dice, iou = dice_iou(pred, target)
    assert dice == pytest.approx(2 * 10 / 40)
    assert iou == pytest.approx(10 / 30)


@pytest.mark.parametrize("seed", range(5))
def test_dice_iou_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((37, 53)) < 0.3
    target = rng.random((37, 53)) < 0.4
    dice, iou = dice_iou(pred, target)
    assert dice == pytest.approx(f1_score(target.ravel(), pred.ravel()))
    assert iou == pytest.approx(jaccard_score(target.ravel(), pred.ravel()))


def test_empty_rules_and_shape_error() -> None:
    z = np.zeros((4, 5), bool)
    o = np.ones((4, 5), bool)
    assert dice_iou(z, z) == (1.0, 1.0)
    assert dice_iou(z, o) == (0.0, 0.0)
    assert dice_iou(o, z) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        dice_iou(z, np.zeros((5, 4), bool))


def test_binarize() -> None:
    p = np.array([0.05, 0.2, 0.5, 0.51, 0.9])
    assert binarize(p).tolist() == [False, False, False, True, True]
    assert binarize(p, 0.1).tolist() == [False, True, True, True, True]
    logits = np.array([-800.0, -1.0, 0.0, 1e-3, 800.0])
    assert binarize(logits, logits=True).tolist() == [False, False, False, True, True]
    with pytest.raises(ValueError, match="logits=True"):
        binarize(logits)
    with pytest.raises(ValueError):
        binarize(p, 1.5)


def test_segmentation_scores_summary_and_modalities() -> None:
    rng = np.random.default_rng(7)
    samples = []
    for i in range(9):
        pred = rng.random((20, 30)) < 0.3
        target = rng.random((20, 30)) < 0.3
        if i == 2:
            pred[:] = False  # empty prediction
        if i == 5:
            pred[:] = target[:] = False  # both empty
        if i == 7:
            target[:] = False  # empty target
        samples.append((pred, target, ["ct", "mr", "endoscopy"][i % 3]))
    samples.append((samples[0][0], samples[0][1], None))  # no modality
    acc = SegmentationScores()
    for i, (p, t, m) in enumerate(samples):
        acc.add(p, t, modality=m, sample_id=f"s{i}")
    s = acc.summary()

    dices, ious, inter, union, sizes = [], [], 0, 0, 0
    for p, t, _ in samples:
        d, j = dice_iou(p, t)
        dices.append(d)
        ious.append(j)
        inter += int((p & t).sum())
        union += int((p | t).sum())
        sizes += int(p.sum() + t.sum())
    assert s["n"] == 10 and len(acc) == 10
    assert s["mDice"] == pytest.approx(np.mean(dices))
    assert s["mIoU"] == pytest.approx(np.mean(ious))
    assert s["dice_cumulative"] == pytest.approx(2 * inter / sizes)
    assert s["iou_cumulative"] == pytest.approx(inter / union)
    assert s["n_empty_target"] == 2 and s["n_empty_pred"] == 2

    manual: dict[str, list[tuple[float, float]]] = {}
    for p, t, m in samples:
        if m is not None:
            manual.setdefault(m, []).append(dice_iou(p, t))
    assert set(s["per_modality"]) == set(manual)
    for m, vals in manual.items():
        got = s["per_modality"][m]
        assert got["n"] == len(vals)
        assert got["mDice"] == pytest.approx(np.mean([v[0] for v in vals]))
        assert got["mIoU"] == pytest.approx(np.mean([v[1] for v in vals]))

    rows = acc.rows()
    assert [r["sample_id"] for r in rows] == [f"s{i}" for i in range(10)]
    assert rows[5]["dice"] == 1.0 and rows[2]["iou"] == 0.0
    assert rows[9]["modality"] is None


def test_segmentation_scores_empty_and_all_empty_masks() -> None:
    with pytest.raises(ValueError, match="no samples"):
        SegmentationScores().summary()
    acc = SegmentationScores()
    acc.add(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    s = acc.summary()
    assert s["mDice"] == s["iou_cumulative"] == s["dice_cumulative"] == 1.0
    assert s["per_modality"] == {}


def test_token_f1_by_hand() -> None:
    # ref -> [polyp, is, large]; pred -> [large, polyp]; common 2: P = 1, R = 2/3, F1 = 0.8
    assert token_f1("the polyp is large", "a large polyp") == pytest.approx(0.8)
    assert token_f1("The Polyp, is LARGE!", "large polyp is the") == pytest.approx(1.0)
    # multiset: ref [left, left, lung] vs pred [left, lung, lung]: common 2 -> P = R = 2/3
    assert token_f1("left left lung", "left lung lung") == pytest.approx(2 / 3)
    assert token_f1("a polyp", "no lesion") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalising
    assert token_f1("polyp", "the") == 0.0
    assert mean_token_f1(
        ["the polyp is large", "a polyp"], ["a large polyp", "no lesion"]
    ) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        mean_token_f1(["a"], [])
