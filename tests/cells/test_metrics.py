"""Segmentation metrics on hand-built cases and against brute-force re-implementations."""

from __future__ import annotations

import numpy as np
import pytest

from pathmllm.cells.metrics import aji, detection_f1, dice, match, panoptic_quality, score


def _square(lab: np.ndarray, value: int, r0: int, c0: int, size: int) -> None:
    lab[r0 : r0 + size, c0 : c0 + size] = value


def _brute_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al.'s AJI written out with loops over instances."""
    gids = [g for g in np.unique(gt) if g]
    pids = [p for p in np.unique(pred) if p]
    used = set()
    c = u = 0
    for g in gids:
        gm = gt == g
        best, best_iou = None, 0.0
        for p in pids:
            pm = pred == p
            inter = (gm & pm).sum()
            iou = inter / (gm | pm).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            u += gm.sum()
        else:
            pm = pred == best
            c += (gm & pm).sum()
            u += (gm | pm).sum()
            used.add(best)
    for p in pids:
        if p not in used:
            u += (pred == p).sum()
    return c / u if u else 1.0


def _brute_match(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, float]:
    tp, ious = 0, []
    for g in [g for g in np.unique(gt) if g]:
        for p in [p for p in np.unique(pred) if p]:
            gm, pm = gt == g, pred == p
            iou = (gm & pm).sum() / (gm | pm).sum()
            if iou > 0.5:
                tp += 1
                ious.append(iou)
    n_g, n_p = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
    return tp, n_p - tp, n_g - tp, float(np.sum(ious))


def test_perfect_prediction_scores_one() -> None:
    gt = np.zeros((20, 20), int)
    _square(gt, 1, 2, 2, 5)
    _square(gt, 2, 10, 10, 6)
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))  # ids need not agree
    s = score(gt, pred)
    assert (s.dice, s.aji, s.f1, s.pq) == (1.0, 1.0, 1.0, 1.0)


def test_hand_computed_case() -> None:
    gt = np.zeros((10, 10), int)
    _square(gt, 1, 0, 0, 4)  # 16 px
    _square(gt, 2, 6, 6, 4)  # 16 px, missed
    pred = np.zeros((10, 10), int)
    _square(pred, 1, 0, 0, 4)
    pred[0:4, 4] = 1  # 20 px, overlaps gt 1 by 16: IoU 0.8
    _square(pred, 2, 0, 7, 2)  # 4 px false positive
    # Dice: 2*16 / (32 + 24)
    assert dice(gt, pred) == pytest.approx(32 / 56)
    # AJI: C = 16; U = 20 (pair) + 16 (missed gt) + 4 (unused pred) = 40
    assert aji(gt, pred) == pytest.approx(16 / 40)
    m = match(gt, pred)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert detection_f1(gt, pred) == pytest.approx(2 / 4)
    assert panoptic_quality(gt, pred) == pytest.approx(0.5 * 0.8)


def test_oversplitting_is_punished_by_aji_not_by_dice() -> None:
    gt = np.zeros((10, 10), int)
    _square(gt, 1, 0, 0, 8)
    pred = np.zeros((10, 10), int)
    pred[0:8, 0:4] = 1
    pred[0:8, 4:8] = 2
    assert dice(gt, pred) == 1.0
    assert aji(gt, pred) == pytest.approx(32 / (64 + 32))
    assert detection_f1(gt, pred) == 0.0


def test_empty_cases() -> None:
    empty = np.zeros((5, 5), int)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert score(empty, empty).to_dict() | {} == {"dice": 1.0, "aji": 1.0, "f1": 1.0, "pq": 1.0, "n_true": 0, "n_pred": 0}
    assert dice(empty, one) == 0.0 and aji(empty, one) == 0.0 and detection_f1(empty, one) == 0.0
    assert dice(one, empty) == 0.0 and aji(one, empty) == 0.0 and panoptic_quality(one, empty) == 0.0


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        aji(np.zeros((3, 3), int), np.zeros((3, 4), int))


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force_on_random_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    from skimage.measure import label

    gt = label(rng.random((40, 40)) > 0.6)
    pred = label(np.roll(gt > 0, rng.integers(-2, 3), axis=rng.integers(0, 2)) & (rng.random((40, 40)) > 0.1))
    assert aji(gt, pred) == pytest.approx(_brute_aji(gt, pred))
    tp, fp, fn, iou_sum = _brute_match(gt, pred)
    m = match(gt, pred)
    assert (m.tp, m.fp, m.fn) == (tp, fp, fn)
    assert m.iou_sum == pytest.approx(iou_sum)


def test_dice_against_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.random((30, 30)) > 0.5, rng.random((30, 30)) > 0.4
    assert dice(a.astype(int), b.astype(int)) == pytest.approx(sk.f1_score(a.ravel(), b.ravel()))
