"""Cross-modal retrieval: image -> text and text -> image Recall@K.

An image may have several captions and a caption several images (ARCH's multi-panel figures):
a query is a hit at K when *any* of its matches is in the top K. Identical captions are one
gallery item (datasets store them once), so a duplicate never competes with itself.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import CaptionSet, Data
from pathmllm.bench.metrics import recall_at_k, relevance_matrix, top1_concentration
from pathmllm.bench.task_base import Task, TaskResult, check_same_space, warn


def retrieval_metrics(image_vecs: np.ndarray, text_vecs: np.ndarray, positives: list[list[int]],
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``i2t_R@K`` and ``t2i_R@K`` for unit vectors and each image's matching caption indices."""
    scores = image_vecs @ text_vecs.T
    rel = relevance_matrix(positives, len(text_vecs))
    i2t = recall_at_k(scores, rel, ks)
    t2i = recall_at_k(scores.T, rel.T, ks)
    out = {f"i2t_R@{k}": v for k, v in i2t.items()} | {f"t2i_R@{k}": v for k, v in t2i.items()}
    out["mean_R"] = float(np.mean(list(out.values())))
    return out


class CrossModalRetrievalTask(Task):
    """Image <-> text retrieval on a caption set. Options: ``ks`` (default 1, 5, 10)."""

    task_type = "retrieval"
    data_kind = "captions"
    main_metrics = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")

    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        assert isinstance(data, CaptionSet)
        start = time.perf_counter()
        ks = tuple(self.options.get("ks", (1, 5, 10)))
        texts = embedder.embed_texts(data.texts)
        images = embedder.embed_images(data.images)
        check_same_space(images, texts, str(embedder.name))
        metrics = retrieval_metrics(images, texts, data.positives, ks)
        warnings: list[str] = []
        if len(data.texts) > 2:
            item, frac = top1_concentration(images @ texts.T)
            if frac >= 0.5:
                warn(warnings, f"{embedder.name} on {data.name}: one caption is the top match of {frac:.0%} of the "
                               "images; the embeddings may have collapsed")
        return self.result(data, metrics, len(data), warnings=warnings, seconds=time.perf_counter() - start,
                           details={"n_images": len(data.images), "n_texts": len(data.texts)})
