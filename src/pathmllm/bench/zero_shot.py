"""Zero-shot classification with a universal embedder: images against class-prompt texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pathmllm.data.tile_classes import CAPTION_TEMPLATES


def class_prototypes(embedder: Any, class_names: Sequence[str], templates: Sequence[str] = CAPTION_TEMPLATES) -> np.ndarray:
    """``(num_classes, dim)`` unit vectors: each class's template texts embedded and averaged
    (CLIP-style prompt ensembling)."""
    texts = [t.format(name=name) for name in class_names for t in templates]
    vecs = embedder.embed_texts(texts).reshape(len(class_names), len(templates), -1).mean(axis=1)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def zero_shot_predict(image_vectors: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index of the most similar (cosine) class for each image vector."""
    return np.argmax(image_vectors @ prototypes.T, axis=1)


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def zero_shot_eval(embedder: Any, images: Sequence[Any], labels: Sequence[str],
                   class_names: dict[str, str], templates: Sequence[str] = CAPTION_TEMPLATES) -> dict[str, Any]:
    """Balanced accuracy and accuracy of zero-shot classification of ``images``."""
    classes = sorted(class_names)
    protos = class_prototypes(embedder, [class_names[c] for c in classes], templates)
    pred = zero_shot_predict(embedder.embed_images(list(images)), protos)
    y = np.array([classes.index(label) for label in labels])
    return {"balanced_accuracy": balanced_accuracy(y, pred), "accuracy": float(np.mean(pred == y)),
            "n": len(y), "classes": classes}
