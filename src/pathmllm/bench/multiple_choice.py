"""Multiple choice (PathMMU-style): the (image, question) vector against each option's text.

A question counts as answered only if the correct option scores strictly higher than every
other option (a tie is wrong), so a model with constant scores gets 0, not the share of 'A'.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import Data, VQASet
from pathmllm.bench.task_base import Task, TaskResult, check_same_space, warn


def multiple_choice_correct(scores: list[np.ndarray], answer_index: list[int]) -> np.ndarray:
    """Per question: True when the correct option's score beats every other option's."""
    out = []
    for s, a in zip(scores, answer_index):
        others = np.delete(s, a)
        out.append(bool(len(others) == 0 or s[a] > others.max()))
    return np.array(out, dtype=bool)


class MultipleChoiceTask(Task):
    """Accuracy over questions with answer options."""

    task_type = "multiple-choice"
    data_kind = "vqa"
    main_metrics = ("accuracy",)

    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        assert isinstance(data, VQASet)
        if data.options is None or data.answer_index is None:
            raise ValueError(f"{data.name} has no answer options; multiple choice needs 'options' per question")
        start = time.perf_counter()
        texts = list(dict.fromkeys(o for opts in data.options for o in opts))
        text_vecs = embedder.embed_texts(texts)
        queries = embedder.embed_pairs(data.images, data.questions)
        check_same_space(queries, text_vecs, str(embedder.name), "image+text and text")
        index = {t: i for i, t in enumerate(texts)}
        scores = [text_vecs[[index[o] for o in opts]] @ q for q, opts in zip(queries, data.options)]
        correct = multiple_choice_correct(scores, data.answer_index)
        picked = np.array([int(np.argmax(s)) for s in scores])
        warnings: list[str] = []
        values, counts = np.unique(picked, return_counts=True)
        if len(picked) > 1 and counts.max() / len(picked) >= 0.9 and len(set(data.answer_index)) > 1:
            warn(warnings, f"{embedder.name} on {data.name}: option {chr(65 + int(values[np.argmax(counts)]))} was "
                           f"picked for {counts.max() / len(picked):.0%} of the questions; the predictions collapsed")
        return self.result(data, {"accuracy": float(np.mean(correct))}, len(data), warnings=warnings,
                           seconds=time.perf_counter() - start)
