"""Linear probe and kNN on frozen image embeddings (as eva and THUNDER offer).

Both fit on a train part and score the test part with balanced accuracy, accuracy and weighted
F1. The train part is the dataset's official train split where it has one (CRC-100K, PCam,
SICAPv2, SkinCancer, MHIST), else a stratified split that never cuts a group (WSSS4LUAD's slides,
BACH's patient blocks, Osteo's patients, LC25000's near-duplicate groups from a groups.csv);
LC25000, BACH and Osteo are never split without groups. Image-only models work: no text is
embedded.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import ClassificationSet, Data
from pathmllm.bench.metrics import classification_metrics, per_class_recall, prediction_collapse
from pathmllm.bench.task_base import Task, TaskResult, warn
from pathmllm.utils.optional import require


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 20) -> np.ndarray:
    """Majority vote of the ``k`` most cosine-similar train vectors (equal votes: the smallest
    label, as scikit-learn's ``KNeighborsClassifier(weights="uniform")``)."""
    k = min(k, len(train_x))
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = b @ a.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = train_y[nearest]
    n_classes = int(train_y.max()) + 1
    counts = np.stack([np.bincount(v, minlength=n_classes) for v in votes])
    return np.argmax(counts, axis=1)


class _ProbeTask(Task):
    data_kind = "classification"
    needs_train = True
    main_metrics = ("balanced_accuracy", "accuracy", "weighted_f1")

    @abstractmethod
    def predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        """Labels of ``test_x`` from a classifier fitted on ``(train_x, train_y)`` (kNN, logistic regression)."""

    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        assert isinstance(data, ClassificationSet) and isinstance(train, ClassificationSet)
        if list(train.classes) != list(data.classes):
            raise ValueError(f"{data.name}: train and test parts have different classes")
        start = time.perf_counter()
        train_x = embedder.embed_images(train.images)
        test_x = embedder.embed_images(data.images)
        if len(np.unique(train.labels)) < 2:
            raise ValueError(f"{data.name}: the train part has only one class; a probe needs two or more")
        pred = self.predict(train_x, train.labels, test_x)
        warnings: list[str] = []
        collapsed = prediction_collapse(pred, data.labels)
        if collapsed is not None:
            warn(warnings, f"{embedder.name} on {data.name} ({self.task_type}): {collapsed[1]:.0%} of the images were "
                           f"classified as {data.classes[collapsed[0]]!r}; the predictions collapsed into one class")
        return self.result(data, classification_metrics(data.labels, pred), len(data), warnings=warnings,
                           seconds=time.perf_counter() - start,
                           details={"n_train": len(train), "classes": list(data.classes),
                                    "per_class_recall": per_class_recall(data.labels, pred, data.classes)})


class LinearProbeTask(_ProbeTask):
    """Logistic regression on frozen embeddings. Options: ``C`` (1.0), ``max_iter`` (1000)."""

    task_type = "linear-probe"

    def predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        linear_model = require("sklearn.linear_model", "the linear probe")
        clf = linear_model.LogisticRegression(C=float(self.options.get("C", 1.0)),
                                              max_iter=int(self.options.get("max_iter", 1000)))
        clf.fit(train_x, train_y)
        return np.asarray(clf.predict(test_x))


class KNNTask(_ProbeTask):
    """k-nearest-neighbour vote on cosine similarity. Options: ``k`` (20)."""

    task_type = "knn"

    def predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        return knn_predict(train_x, train_y, test_x, int(self.options.get("k", 20)))
