"""Evaluate a grounding model (MedPLIB-style) on MeCoVQA records.

For every record the model answers from the image (and the record's ``<region>`` mask):

* **grounding** records (``<SEG>`` + a target mask): Dice and IoU of the predicted mask against
  the target (:class:`~pathmllm.bench.seg_metrics.SegmentationScores`: logits > 0, i.e.
  probability > 0.5; an answer without ``<SEG>`` is an *empty* prediction and scores 0 on a
  non-empty target, never a forced mask); several ``<SEG>`` masks are united. Also the rate at
  which the model emitted ``<SEG>`` at all.
* **closed** questions (``answer_type: closed``, or a one-word reference such as yes/no):
  accuracy of the first word of the answer (lower-cased, punctuation stripped).
* **open** questions: BLEU-1..4, ROUGE-L (the established packages, via
  :mod:`pathmllm.bench.text_metrics`) and token F1.

Every figure is also given per modality.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from pathmllm.bench.seg_metrics import SegmentationScores, mean_token_f1

__all__ = ["evaluate_grounding", "first_word"]

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+")


def _strip_tokens(text: str) -> str:
    return " ".join(re.sub(r"<[^>\s]+>", " ", text).split())


def first_word(text: str) -> str:
    """Lower-cased first word of ``text`` without the model's special tokens (``""`` if none)."""
    text = _strip_tokens(text)
    m = _WORD.search(text.lower())
    return m.group(0) if m else ""


def _is_closed(record: Any) -> bool:
    if record.answer_type is not None:
        return record.answer_type == "closed"
    return len(_WORD.findall(record.answer.lower())) == 1 and not record.has_seg


def _load_rgb(path: Any) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def evaluate_grounding(
    model: Any,
    records: Sequence[Any],
    *,
    max_items: int | None = None,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Answer every record with ``model.generate`` and score it (module docstring).

    Returns ``{"n", "segmentation": {...}, "seg_emitted", "closed": {...}, "open": {...},
    "per_modality": {...}, "predictions": [...]}``.
    """
    from pathmllm.bench.text_metrics import bleu_scores, rouge_l
    from pathmllm.data.mecovqa import load_mask

    items = list(records)[: max_items if max_items is not None else None]
    seg = SegmentationScores()
    emitted = 0
    n_seg = 0
    closed: dict[str, list[bool]] = defaultdict(list)
    open_refs: dict[str, list[str]] = defaultdict(list)
    open_hyps: dict[str, list[str]] = defaultdict(list)
    predictions: list[dict[str, Any]] = []
    for i, rec in enumerate(items):
        image = _load_rgb(rec.image)
        hw = image.shape[:2]
        region = load_mask(rec.region_mask, hw) if rec.region_mask is not None else None
        text, masks = model.generate(image, rec.question, region, max_new_tokens=max_new_tokens)
        pred: dict[str, Any] = {"id": rec.meta.get("id"), "task": rec.task, "modality": rec.modality,
                                "answer": text, "reference": rec.answer}
        if rec.has_seg and rec.target_mask is not None:
            n_seg += 1
            target = load_mask(rec.target_mask, hw)
            if masks is not None and masks.shape[0] > 0:
                emitted += 1
                union = masks.numpy().any(axis=0)
            else:
                union = np.zeros(hw, dtype=bool)
            dice, iou = seg.add(union, target, modality=rec.modality, sample_id=pred["id"])
            pred.update(dice=dice, iou=iou, emitted_seg=masks is not None and masks.shape[0] > 0)
        elif _is_closed(rec):
            ok = first_word(text) == first_word(rec.answer)
            closed["all"].append(ok)
            closed[rec.modality].append(ok)
            pred["correct"] = ok
        else:
            for key in ("all", rec.modality):  # special tokens (<SEG> ...) left out on both sides
                open_refs[key].append(_strip_tokens(rec.answer))
                open_hyps[key].append(_strip_tokens(text))
        predictions.append(pred)
        if progress and (i + 1) % 20 == 0:
            log.info("evaluated %d/%d", i + 1, len(items))

    def closed_summary(key: str) -> dict[str, Any]:
        v = closed.get(key, [])
        return {"n": len(v), "accuracy": float(np.mean(v)) if v else None}

    def open_summary(key: str) -> dict[str, Any]:
        refs, hyps = open_refs.get(key, []), open_hyps.get(key, [])
        if not refs:
            return {"n": 0}
        out: dict[str, Any] = {"n": len(refs)}
        out.update(bleu_scores(refs, hyps))
        out["rouge_l"] = rouge_l(refs, hyps)
        out["token_f1"] = mean_token_f1(refs, hyps)
        return out

    modalities = sorted({r.modality for r in items})
    seg_summary = seg.summary() if len(seg) else {"n": 0}
    return {
        "n": len(items),
        "segmentation": seg_summary,
        "seg_emitted": (emitted / n_seg) if n_seg else None,
        "closed": closed_summary("all"),
        "open": open_summary("all"),
        "per_modality": {m: {"closed": closed_summary(m), "open": open_summary(m)} for m in modalities},
        "predictions": predictions,
    }
