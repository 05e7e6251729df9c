"""Every benchmark metric against scikit-learn or a direct computation: random inputs, ties,
one-class predictions, several and duplicate captions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, top_k_accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from pathmllm.bench.datasets.captions import caption_set
from pathmllm.bench.metrics import (
    best_match_rank,
    classification_metrics,
    prediction_collapse,
    recall_at_k,
    relevance_matrix,
)
from pathmllm.bench.multiple_choice import multiple_choice_correct
from pathmllm.bench.probe import knn_predict
from pathmllm.bench.retrieval import retrieval_metrics


def sklearn_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes predicted but absent from y_true
        return {"balanced_accuracy": balanced_accuracy_score(y, p), "accuracy": accuracy_score(y, p),
                "weighted_f1": f1_score(y, p, average="weighted", zero_division=0)}


@pytest.mark.parametrize("seed", range(8))
def test_classification_metrics_match_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 9))
    y = rng.integers(0, n_classes, int(rng.integers(5, 200)))
    p = np.where(rng.random(len(y)) < 0.5, y, rng.integers(0, n_classes + 1, len(y)))  # some classes absent from y
    got = classification_metrics(y, p)
    for k, v in sklearn_metrics(y, p).items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_one_class_predictions_match_sklearn_and_are_flagged() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.zeros_like(y)
    got = classification_metrics(y, p)
    for k, v in sklearn_metrics(y, p).items():
        assert got[k] == pytest.approx(v)
    assert got["balanced_accuracy"] == pytest.approx(1 / 3)
    assert prediction_collapse(p, y) == (0, 1.0)
    assert prediction_collapse(y, y) is None  # a varied prediction is fine
    assert prediction_collapse(np.zeros(5, int), np.zeros(5, int)) is None  # one true class: nothing to flag
    assert prediction_collapse(np.array([0] * 9 + [1]), np.array([0] * 5 + [1] * 5), threshold=0.9) == (0, 0.9)


@pytest.mark.parametrize("seed", range(6))
def test_recall_at_k_single_match_equals_sklearn_top_k_accuracy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, g = 40, 25
    scores = rng.standard_normal((q, g))  # no ties
    target = rng.integers(0, g, q)
    rel = relevance_matrix([[t] for t in target], g)
    got = recall_at_k(scores, rel, (1, 5, 10))
    for k in (1, 5, 10):
        assert got[k] == pytest.approx(top_k_accuracy_score(target, scores, k=k, labels=np.arange(g)))


def direct_recall(scores: np.ndarray, rel: np.ndarray, k: int) -> float:
    """Sort each gallery by score, matches after non-matches among equal scores (ties against the
    model), and look for a match in the first k."""
    hits = []
    for s, r in zip(scores, rel):
        order = sorted(range(len(s)), key=lambda j: (-s[j], bool(r[j])))
        hits.append(any(r[j] for j in order[:k]))
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", range(6))
def test_recall_at_k_with_ties_and_several_matches_equals_direct_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, g = 30, 12
    scores = rng.integers(0, 4, (q, g)).astype(float)  # many ties
    rel = rng.random((q, g)) < 0.2
    rel[np.arange(q), rng.integers(0, g, q)] = True  # every query has a match
    got = recall_at_k(scores, rel, (1, 3, 5, 10))
    for k, v in got.items():
        assert v == pytest.approx(direct_recall(scores, rel, k))


def test_constant_scores_never_count_as_hits() -> None:
    scores = np.zeros((6, 20))
    rel = relevance_matrix([[i] for i in range(6)], 20)
    assert recall_at_k(scores, rel, (1, 10)) == {1: 0.0, 10: 0.0}
    assert recall_at_k(np.zeros((2, 3)), relevance_matrix([[0], [1]], 3), (3,)) == {3: 1.0}  # K >= gallery
    assert list(best_match_rank(np.zeros((1, 4)), relevance_matrix([[2]], 4))) == [3]


def test_a_query_without_a_match_is_an_error() -> None:
    with pytest.raises(ValueError, match="query 1 has no matching gallery item"):
        recall_at_k(np.zeros((2, 3)), relevance_matrix([[0], []], 3))


def test_duplicate_captions_are_one_gallery_item_with_several_images() -> None:
    data = caption_set("x", [("a.png", "Tumour cells in sheets."), ("b.png", "Tumour  cells in sheets."),
                             ("c.png", "Necrosis."), ("a.png", "Necrosis.")])
    assert data.images == ["a.png", "b.png", "c.png"]
    assert data.texts == ["Tumour cells in sheets.", "Necrosis."]
    assert data.positives == [[0, 1], [0], [1]]
    # a model that puts every image on its first caption: perfect, although two images share a caption
    texts = np.eye(4)[:2]
    images = np.stack([texts[0], texts[0], texts[1]])
    m = retrieval_metrics(images, texts, data.positives, (1,))
    assert m["i2t_R@1"] == 1.0 and m["t2i_R@1"] == 1.0
    # had the shared caption been stored twice, each copy would tie with the other image's copy and miss
    dup_texts = np.stack([texts[0], texts[0], texts[1]])
    dup = retrieval_metrics(images, dup_texts, [[0], [1], [2]], (1,))
    assert dup["i2t_R@1"] == pytest.approx(1 / 3)


def test_retrieval_metrics_directions_agree_with_direct_computation() -> None:
    rng = np.random.default_rng(3)
    img, txt = rng.standard_normal((9, 5)), rng.standard_normal((7, 5))
    positives = [[i % 7] for i in range(9)]
    m = retrieval_metrics(img, txt, positives, (1, 5))
    rel = relevance_matrix(positives, 7)
    assert m["i2t_R@5"] == pytest.approx(direct_recall(img @ txt.T, rel, 5))
    assert m["t2i_R@1"] == pytest.approx(direct_recall(txt @ img.T, rel.T, 1))
    assert m["mean_R"] == pytest.approx(np.mean([m[k] for k in m if k != "mean_R"]))


@pytest.mark.parametrize("seed", range(4))
def test_knn_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((60, 6)), rng.integers(0, 3, 60)
    t = rng.standard_normal((25, 6))
    for k in (1, 4, 7):
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x, y).predict(t)
        assert np.array_equal(knn_predict(x, y, t, k), ref)


def test_multiple_choice_counts_ties_as_wrong() -> None:
    scores = [np.array([0.1, 0.9, 0.2]), np.array([0.5, 0.5, 0.1]), np.array([0.3, 0.2]), np.array([0.7])]
    assert list(multiple_choice_correct(scores, [1, 0, 1, 0])) == [True, False, False, True]
    rng = np.random.default_rng(0)
    s = [rng.standard_normal(4) for _ in range(50)]
    a = [int(rng.integers(0, 4)) for _ in range(50)]
    assert np.array_equal(multiple_choice_correct(s, a), [int(np.argmax(x)) == y for x, y in zip(s, a)])
