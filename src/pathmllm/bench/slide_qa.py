"""Slide question answering evaluation (WSI-Bench style): ``pathmllm bench run --suite slide-qa``.

For a slide model (``pathmllm train slide``), a slide-QA file and the slide stores:

* **closed questions** (with options): accuracy of the option letter parsed from the generated
  answer (:func:`~pathmllm.bench.text_metrics.closed_answer_letter`; an unparseable answer is
  wrong);
* **open questions and reports**: corpus BLEU-1..4, ROUGE-L and METEOR
  (:mod:`pathmllm.bench.text_metrics`);
* **report → slide retrieval**: each report's text vector (the model's text tower) against the
  pooled slide vector of every evaluated slide; Recall@1/5/10 (ties count against the model).

Slides whose store is missing are prepared first when ``slides`` (a folder of slide files) is
given, otherwise their questions are skipped and listed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SlideQAResult", "evaluate_slide_qa"]


@dataclass
class SlideQAResult:
    rows: list[dict[str, Any]]
    """One per question: slide, task, question, reference, prediction, closed, correct."""
    closed_accuracy: float | None
    open_scores: dict[str, float] | None
    retrieval: dict[str, float] | None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        n_closed = sum(r["closed"] for r in self.rows)
        return {
            "n_questions": len(self.rows), "n_closed": n_closed, "n_open": len(self.rows) - n_closed,
            "closed_accuracy": self.closed_accuracy, "open": self.open_scores, "report_to_slide": self.retrieval,
            "per_task": self.per_task, "skipped": self.skipped, "seconds": round(self.seconds, 1),
        }


def evaluate_slide_qa(
    model: Any,
    spec: Any,
    qa_path: str | os.PathLike[str],
    stores: str | os.PathLike[str],
    *,
    slides: str | os.PathLike[str] | None = None,
    fmt: str = "auto",
    max_questions: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    mpp: float | None = None,
) -> SlideQAResult:
    """Answer every question of ``qa_path`` (at most ``max_questions``) and score the answers."""
    import time

    import torch

    from pathmllm.bench.metrics import recall_at_k
    from pathmllm.bench.text_metrics import closed_answer_letter, open_answer_scores
    from pathmllm.data.slide_qa import index_slides, read_slide_qa, resolve_slide
    from pathmllm.models.hierarchy.pipeline import (
        format_prompt,
        prepare_slide,
        read_hierarchy,
        store_dir,
    )
    from pathmllm.models.hierarchy.store_batch import collate_hierarchy

    t0 = time.perf_counter()
    records, _problems = read_slide_qa(qa_path, fmt)
    if max_questions is not None:
        records = records[:max_questions]
    if not records:
        raise ValueError(f"{qa_path}: no slide-QA records to evaluate")
    slide_files = index_slides(slides) if slides else {}
    by_slide: dict[str, list[Any]] = defaultdict(list)
    skipped: list[str] = []
    stores_of: dict[str, Path] = {}
    for r in records:
        if r.slide_id in stores_of:
            by_slide[r.slide_id].append(r)
            continue
        path = resolve_slide(r, slide_files) if slide_files else None
        name = path.stem if path is not None else Path(r.slide_id).stem
        try:
            store = (prepare_slide(path, stores, spec, mpp=mpp, device="cpu") if path is not None
                     else store_dir(stores, name, spec))
        except Exception as exc:  # a bad slide is reported, the others are evaluated
            skipped.append(f"{r.slide_id}: {exc}")
            continue
        if not store.is_dir():
            skipped.append(f"{r.slide_id}: no slide store at {store}")
            continue
        stores_of[r.slide_id] = store
        by_slide[r.slide_id].append(r)

    rows: list[dict[str, Any]] = []
    slide_vecs, report_vecs = [], []
    model.eval()
    with torch.no_grad():
        for slide_id, recs in by_slide.items():
            hierarchy = read_hierarchy(stores_of[slide_id], spec)
            device = next(model.llm.parameters()).device
            batch = collate_hierarchy([hierarchy]).to(device)
            for i in range(0, len(recs), batch_size):
                chunk = recs[i:i + batch_size]
                prompts = [format_prompt(spec, model.tokenizer, r.prompt(), model.slide_token) for r in chunk]
                many = collate_hierarchy([hierarchy] * len(chunk)).to(device)
                answers = model.generate(many, prompts, max_new_tokens=max_new_tokens)
                for r, a in zip(chunk, answers, strict=True):
                    closed = r.options is not None
                    correct = None
                    if closed:
                        correct = closed_answer_letter(a, r.options) == (r.answer_label or "").upper()
                    rows.append({"slide": slide_id, "task": r.task or "", "question": r.question,
                                 "reference": r.answer_text if not closed else r.answer_label,
                                 "prediction": a.strip(), "closed": closed, "correct": correct,
                                 "is_report": r.is_report})
            reports = [r.answer for r in recs if r.is_report]
            if reports:
                pooled = model.encoder(batch).pooled["slide"][0]
                slide_vecs.append(pooled.float())
                report_vecs.append(model.embed_texts([reports[0]])[0].float())

    closed_rows = [r for r in rows if r["closed"]]
    open_rows = [r for r in rows if not r["closed"]]
    closed_acc = float(np.mean([r["correct"] for r in closed_rows])) if closed_rows else None
    open_scores = (open_answer_scores([r["reference"] for r in open_rows], [r["prediction"] for r in open_rows])
                   if open_rows else None)
    retrieval = None
    if len(slide_vecs) >= 2:
        s = torch.nn.functional.normalize(torch.stack(slide_vecs), dim=-1)
        t = torch.nn.functional.normalize(torch.stack(report_vecs), dim=-1)
        sim = (t @ s.T).cpu().numpy()
        retrieval = {f"recall@{k}": v for k, v in
                     recall_at_k(sim, np.eye(len(sim), dtype=bool), ks=(1, 5, 10)).items()}
        retrieval["n"] = len(sim)
    per_task: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in rows}):
        tr = [r for r in rows if r["task"] == task]
        closed_t = [r["correct"] for r in tr if r["closed"]]
        per_task[task or "-"] = {"n": len(tr), **({"accuracy": float(np.mean(closed_t))} if closed_t else {})}
    return SlideQAResult(rows, closed_acc, open_scores, retrieval, per_task, skipped, time.perf_counter() - t0)
