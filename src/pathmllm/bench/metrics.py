"""Metrics of the PMEB tasks, in numpy (each checked against scikit-learn or a direct computation
in tests/bench/test_metrics.py).

Ties: in retrieval a query counts as a hit at K only if fewer than K *non-matching* gallery items
score at least as high as its best match (ties count against the model). A model whose scores
are all equal therefore scores 0 rather than 1, and the result never depends on gallery order.
Classification predictions take the first of tied classes (``np.argmax``); a prediction that
collapses into one class is flagged by :func:`prediction_collapse`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def balanced_accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def weighted_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Per-class F1 averaged with weights = class support in ``y_true``; a class never predicted
    has F1 0 (scikit-learn's ``f1_score(average="weighted")``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return float("nan")
    total = 0.0
    for c in np.unique(y_true):
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
        total += f1 * np.sum(y_true == c)
    return float(total / len(y_true))


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> dict[str, float]:
    return {"balanced_accuracy": balanced_accuracy(y_true, y_pred), "accuracy": accuracy(y_true, y_pred),
            "weighted_f1": weighted_f1(y_true, y_pred)}


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    return {classes[c]: float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)}


def prediction_collapse(y_pred: np.ndarray, y_true: np.ndarray, threshold: float = 0.9) -> tuple[int, float] | None:
    """``(class, fraction)`` when one class takes at least ``threshold`` of the predictions while
    the truth is spread over several classes (no single class that common); else None."""
    y_pred, y_true = np.asarray(y_pred), np.asarray(y_true)
    if len(y_pred) < 2 or len(np.unique(y_true)) < 2:
        return None
    values, counts = np.unique(y_pred, return_counts=True)
    top = int(np.argmax(counts))
    frac = counts[top] / len(y_pred)
    true_top = np.unique(y_true, return_counts=True)[1].max() / len(y_true)
    return (int(values[top]), float(frac)) if frac >= threshold and true_top < threshold else None


def relevance_matrix(positives: Sequence[Sequence[int]], n_gallery: int) -> np.ndarray:
    """``(queries, gallery)`` bool matrix from each query's list of matching gallery indices."""
    rel = np.zeros((len(positives), n_gallery), dtype=bool)
    for q, pos in enumerate(positives):
        rel[q, list(pos)] = True
    return rel


def best_match_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per query: the number of non-matching gallery items scoring >= its best-scoring match
    (0 = the best match is strictly first). ``scores``, ``relevant``: ``(queries, gallery)``."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevance {relevant.shape} differ in shape")
    if not relevant.any(axis=1).all():
        bad = int(np.flatnonzero(~relevant.any(axis=1))[0])
        raise ValueError(f"query {bad} has no matching gallery item; every query needs at least one")
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~relevant).sum(axis=1)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries with a matching gallery item in the top K (ties against the model;
    any one of several matches counts)."""
    rank = best_match_rank(scores, relevant)
    return {k: float(np.mean(rank < k)) for k in ks}


def top1_concentration(scores: np.ndarray) -> tuple[int, float]:
    """The gallery item most often ranked first and the fraction of queries that rank it first
    (near 1: the embeddings collapsed onto one item)."""
    top = np.argmax(scores, axis=1)
    values, counts = np.unique(top, return_counts=True)
    i = int(np.argmax(counts))
    return int(values[i]), float(counts[i] / len(top))
