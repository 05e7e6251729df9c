"""Nucleus segmentation metrics: pixel Dice, AJI, detection F1 and panoptic quality.

All take instance label images (0 = background). Definitions:

- **Dice**: ``2 |P ∩ G| / (|P| + |G|)`` on the foreground (1.0 when both are empty).
- **AJI** (Kumar et al., 2017, as HoVer-Net's ``get_fast_aji``): each ground-truth nucleus
  is paired with the prediction of highest IoU; the intersections over the unions of the
  pairs, plus every prediction left unpaired added to the union.
- **Detection F1**: a prediction and a ground-truth nucleus match when IoU > 0.5 (such a
  match is unique); F1 = 2 TP / (2 TP + FP + FN).
- **PQ** (Kirillov et al., 2019): DQ (that F1) x SQ (mean IoU of matched pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Consecutive labels 0..n (0 stays background)."""
    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if uniq[0] != 0:
        inv = inv + 1
        return inv, len(uniq)
    return inv, len(uniq) - 1


def overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection matrix ``(n_gt, n_pred)`` and the instance areas, over relabelled ids."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    g, ng = _relabel(gt)
    p, npred = _relabel(pred)
    joint = np.bincount((g.ravel().astype(np.int64) * (npred + 1) + p.ravel()), minlength=(ng + 1) * (npred + 1))
    joint = joint.reshape(ng + 1, npred + 1)
    area_g = joint.sum(axis=1)[1:]
    area_p = joint.sum(axis=0)[1:]
    return joint[1:, 1:], area_g, area_p


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    a, b = gt > 0, pred > 0
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    inter, area_g, area_p = overlaps(gt, pred)
    if len(area_g) == 0 and len(area_p) == 0:
        return 1.0
    union = area_g[:, None] + area_p[None, :] - inter
    used = np.zeros(len(area_p), dtype=bool)
    c = u = 0
    if inter.shape[1]:
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        best = iou.argmax(axis=1)
        for i, j in enumerate(best):
            if inter[i, j] > 0:
                c += inter[i, j]
                u += union[i, j]
                used[j] = True
            else:
                u += area_g[i]
    else:
        u += area_g.sum()
    u += area_p[~used].sum()
    return float(c / u) if u else 1.0


@dataclass
class Matching:
    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def pq(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return self.f1 * self.sq


def match(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> Matching:
    """Pairs with IoU > ``threshold`` (>= 0.5 makes the pairing unique)."""
    inter, area_g, area_p = overlaps(gt, pred)
    union = area_g[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    gi, pj = np.nonzero(iou > threshold)
    if threshold < 0.5:
        raise ValueError("IoU thresholds below 0.5 do not give a unique matching")
    tp = len(gi)
    return Matching(tp=tp, fp=len(area_p) - tp, fn=len(area_g) - tp, iou_sum=float(iou[gi, pj].sum()))


def detection_f1(gt: np.ndarray, pred: np.ndarray) -> float:
    return match(gt, pred).f1


def panoptic_quality(gt: np.ndarray, pred: np.ndarray) -> float:
    return match(gt, pred).pq


@dataclass
class SegmentationScores:
    dice: float
    aji: float
    f1: float
    pq: float
    n_true: int
    n_pred: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def score(gt: np.ndarray, pred: np.ndarray) -> SegmentationScores:
    """All four metrics for one image."""
    m = match(gt, pred)
    return SegmentationScores(
        dice=dice(gt, pred), aji=aji(gt, pred), f1=m.f1, pq=m.pq,
        n_true=int(len(np.unique(gt[gt > 0]))), n_pred=int(len(np.unique(pred[pred > 0]))),
    )
