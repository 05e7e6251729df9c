"""Composed retrieval: an image with a text as the query, a text or an image as the target.

For Quilt-VQA and PathMMU the query is (image, question) embedded together
(``embed_pairs``) and the gallery is every distinct answer text of the set; the query's own
answer is the match. With ``target="image"`` (a manifest with ``target_image``) the gallery is
the distinct target images. Recall@K as in :mod:`pathmllm.bench.metrics` (ties against the model).
"""

from __future__ import annotations

import time
from typing import Any

from pathmllm.bench.datasets.base import Data, VQASet, ref_id
from pathmllm.bench.metrics import recall_at_k, relevance_matrix
from pathmllm.bench.task_base import Task, TaskResult, check_same_space


class ComposedRetrievalTask(Task):
    """Options: ``target`` (``text``, default, or ``image``), ``ks`` (1, 5, 10)."""

    task_type = "composed"
    data_kind = "vqa"
    main_metrics = ("R@1", "R@5", "R@10")

    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        assert isinstance(data, VQASet)
        start = time.perf_counter()
        ks = tuple(self.options.get("ks", (1, 5, 10)))
        target = self.options.get("target", "text")
        if target == "image":
            if data.targets is None:
                raise ValueError(f"{data.name}: composed retrieval to images needs a target image per query "
                                 "(a 'target_image' column)")
            keys = [ref_id(t) for t in data.targets]
            unique = list(dict.fromkeys(keys))
            first = {k: data.targets[keys.index(k)] for k in unique}
            gallery = embedder.embed_images([first[k] for k in unique])
            match = [unique.index(k) for k in keys]
        elif target == "text":
            unique = list(dict.fromkeys(" ".join(a.split()) for a in data.answers))
            gallery = embedder.embed_texts(unique)
            match = [unique.index(" ".join(a.split())) for a in data.answers]
        else:
            raise ValueError(f"target must be 'text' or 'image', got {target!r}")
        queries = embedder.embed_pairs(data.images, data.questions)
        check_same_space(queries, gallery, str(embedder.name), f"image+text and {target}")
        rel = relevance_matrix([[m] for m in match], len(unique))
        metrics = {f"R@{k}": v for k, v in recall_at_k(queries @ gallery.T, rel, ks).items()}
        return self.result(data, metrics, len(data), seconds=time.perf_counter() - start,
                           details={"target": target, "gallery_size": len(unique)})
