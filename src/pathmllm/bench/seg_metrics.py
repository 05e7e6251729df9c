"""Segmentation and short-answer metrics for grounding benchmarks (MeCoVQA-G style).

**Empty-mask rules** of :func:`dice_iou`, stated explicitly:

* target empty and prediction empty → ``(1.0, 1.0)``: correctly predicting "nothing" is right.
  MedPLIB's released evaluation scores this case 0, which penalises a correct answer.
* target non-empty and prediction empty → ``(0.0, 0.0)``.
* target empty and prediction non-empty → ``(0.0, 0.0)``.

:class:`SegmentationScores` reports both the mean of per-sample scores (``mDice``, ``mIoU``)
and dataset-level scores from summed intersections and unions (``dice_cumulative``,
``iou_cumulative``; cIoU/gIoU style), overall and per modality.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["SegmentationScores", "binarize", "dice_iou", "mean_token_f1", "token_f1"]


def _counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} does not match target shape {t.shape}")
    inter = int(np.logical_and(p, t).sum())
    return inter, int(np.logical_or(p, t).sum()), int(p.sum()), int(t.sum())


def _scores(inter: int, union: int, p_sum: int, t_sum: int) -> tuple[float, float]:
    if p_sum == 0 and t_sum == 0:
        return 1.0, 1.0
    return 2.0 * inter / (p_sum + t_sum), inter / union


def dice_iou(pred_bool: np.ndarray, target_bool: np.ndarray) -> tuple[float, float]:
    """``(dice, iou)`` of two binary masks of the same shape (empty rules in the module doc)."""
    return _scores(*_counts(pred_bool, target_bool))


def binarize(
    prob_or_logits: np.ndarray, threshold: float = 0.5, *, logits: bool = False
) -> np.ndarray:
    """Boolean mask ``prob > threshold``; with ``logits=True`` the sigmoid is applied first.

    The default is 0.5 on probabilities (logit 0), the usual decision rule. MedPLIB thresholds
    the sigmoid at 0.1, which enlarges masks (more recall, less precision) and suits one
    model's calibration; a fixed 0.5 keeps scores comparable across models.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    x = np.asarray(prob_or_logits, dtype=np.float64)
    if logits:
        x = expit(x)
    elif x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0):
        raise ValueError("values outside [0, 1] are not probabilities; pass logits=True")
    return x > threshold


class SegmentationScores:
    """Accumulates per-sample Dice/IoU and pixel counts; :meth:`summary` aggregates them."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        modality: str | None = None,
        sample_id: str | None = None,
    ) -> tuple[float, float]:
        """Score one prediction against its target; returns its ``(dice, iou)``."""
        inter, union, p_sum, t_sum = _counts(pred, target)
        dice, iou = _scores(inter, union, p_sum, t_sum)
        self._rows.append(
            {
                "sample_id": sample_id,
                "modality": modality,
                "dice": dice,
                "iou": iou,
                "intersection": inter,
                "union": union,
                "pred_pixels": p_sum,
                "target_pixels": t_sum,
            }
        )
        return dice, iou

    def rows(self) -> list[dict[str, Any]]:
        """Per-sample records, in the order added."""
        return [dict(r) for r in self._rows]

    @staticmethod
    def _aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
        inter = sum(r["intersection"] for r in rows)
        union = sum(r["union"] for r in rows)
        sizes = sum(r["pred_pixels"] + r["target_pixels"] for r in rows)
        return {
            "mDice": float(np.mean([r["dice"] for r in rows])),
            "mIoU": float(np.mean([r["iou"] for r in rows])),
            "dice_cumulative": 2.0 * inter / sizes if sizes else 1.0,
            "iou_cumulative": inter / union if union else 1.0,
        }

    def summary(self) -> dict[str, Any]:
        """Overall scores, counts and ``per_modality`` ``{modality: {mDice, mIoU, n}}``.

        Samples added without a modality count overall but not in ``per_modality``.
        """
        if not self._rows:
            raise ValueError("no samples were added")
        out: dict[str, Any] = self._aggregate(self._rows)
        out["n"] = len(self._rows)
        out["n_empty_target"] = sum(r["target_pixels"] == 0 for r in self._rows)
        out["n_empty_pred"] = sum(r["pred_pixels"] == 0 for r in self._rows)
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self._rows:
            if r["modality"] is not None:
                groups[r["modality"]].append(r)
        out["per_modality"] = {
            m: {"mDice": (a := self._aggregate(rs))["mDice"], "mIoU": a["mIoU"], "n": len(rs)}
            for m, rs in sorted(groups.items())
        }
        return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _normalize_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lowercase, drop punctuation and articles, split on whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def token_f1(reference: str, prediction: str) -> float:
    """SQuAD-style token F1 (multiset overlap). Both empty after normalising → 1.0, one → 0.0."""
    ref, pred = _normalize_tokens(reference), _normalize_tokens(prediction)
    if not ref or not pred:
        return float(ref == pred)
    common = sum((Counter(ref) & Counter(pred)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_token_f1(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean :func:`token_f1` over aligned reference/prediction pairs."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no pairs to score")
    return float(np.mean([token_f1(r, p) for r, p in zip(references, predictions, strict=True)]))
