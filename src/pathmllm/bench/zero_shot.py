"""Zero-shot classification with a universal embedder: images against class-prompt texts.

Each class's prompts (its readable name in every template) are embedded and averaged into one
prototype (CLIP-style prompt ensembling); an image takes the class of its most similar
prototype. Reported: balanced accuracy, accuracy and weighted F1, with a warning when the
predictions collapse into one class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import ClassificationSet, Data
from pathmllm.bench.metrics import (
    balanced_accuracy,
    classification_metrics,
    per_class_recall,
    prediction_collapse,
)
from pathmllm.bench.task_base import Task, TaskResult, check_same_space, warn
from pathmllm.data.tile_classes import CAPTION_TEMPLATES

__all__ = ["ZeroShotClassificationTask", "balanced_accuracy", "class_prototypes", "zero_shot_eval",
           "zero_shot_predict"]


def class_prototypes(embedder: Any, class_names: Sequence[str], templates: Sequence[str] = CAPTION_TEMPLATES) -> np.ndarray:
    """``(num_classes, dim)`` unit vectors: each class's template texts embedded and averaged
    (CLIP-style prompt ensembling)."""
    texts = [t.format(name=name) for name in class_names for t in templates]
    vecs = embedder.embed_texts(texts).reshape(len(class_names), len(templates), -1).mean(axis=1)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def zero_shot_predict(image_vectors: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index of the most similar (cosine) class for each image vector (the first of tied ones)."""
    return np.argmax(image_vectors @ prototypes.T, axis=1)


class ZeroShotClassificationTask(Task):
    """Zero-shot classification: class names x prompt templates, ensembled.

    Options: ``templates`` (default: the dataset's), ``class_names`` (``{raw class: prompt name}``
    replacing the dataset's prompt-name map, e.g. for WSSS4LUAD whose PMEB names are unknown, or
    BACH's plainer names), ``collapse_threshold`` (0.9: warn when one class takes at least this
    fraction of the predictions). The details record which prompt-name map was used.
    """

    task_type = "zero-shot"
    data_kind = "classification"
    main_metrics = ("balanced_accuracy", "accuracy", "weighted_f1")

    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        assert isinstance(data, ClassificationSet)
        start = time.perf_counter()
        templates = tuple(self.options.get("templates") or data.templates)
        override = self.options.get("class_names")
        if override:
            unknown = [c for c in data.classes if c not in override]
            if unknown:
                raise ValueError(f"{data.name}: the class_names option lacks the class(es) {', '.join(unknown)}")
            class_names, prompt_source = [str(override[c]) for c in data.classes], "the task's class_names option"
        else:
            class_names, prompt_source = list(data.class_names), data.prompt_names
        protos = class_prototypes(embedder, class_names, templates)
        vecs = embedder.embed_images(data.images)
        check_same_space(vecs, protos, str(embedder.name))
        pred = zero_shot_predict(vecs, protos)
        warnings: list[str] = []
        collapsed = prediction_collapse(pred, data.labels, float(self.options.get("collapse_threshold", 0.9)))
        if collapsed is not None:
            warn(warnings, f"{embedder.name} on {data.name}: {collapsed[1]:.0%} of the images were classified as "
                           f"{data.classes[collapsed[0]]!r}; the zero-shot predictions collapsed into one class")
        details = {"classes": list(data.classes), "class_names": class_names,
                   "prompt_names": prompt_source or "not recorded", "templates": list(templates),
                   "per_class_recall": per_class_recall(data.labels, pred, data.classes),
                   "prediction_counts": {data.classes[c]: int(np.sum(pred == c)) for c in range(len(data.classes))}}
        return self.result(data, classification_metrics(data.labels, pred), len(data), warnings=warnings,
                           details=details, seconds=time.perf_counter() - start)


def zero_shot_eval(embedder: Any, images: Sequence[Any], labels: Sequence[str],
                   class_names: dict[str, str], templates: Sequence[str] = CAPTION_TEMPLATES) -> dict[str, Any]:
    """Balanced accuracy, accuracy and weighted F1 of zero-shot classification of ``images``
    (``labels`` are keys of ``class_names``, which maps them to readable names)."""
    classes = sorted(class_names)
    y = np.array([classes.index(label) for label in labels])
    data = ClassificationSet("zero-shot-eval", list(images), y, classes, [class_names[c] for c in classes],
                             tuple(templates))
    res = ZeroShotClassificationTask(templates=tuple(templates)).run(data, embedder)
    return {**res.metrics, "n": len(y), "classes": classes}
