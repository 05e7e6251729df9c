"""Ask a slide model about a slide: answer, evidence regions and patches, heatmap.

:func:`ask_slide` runs whatever preprocessing the slide lacks (tiling, cells, patch features,
as the model's :class:`~pathmllm.models.hierarchy.pipeline.SlidePipelineSpec` says), reads
the slide under the model's limits with question-aware selection (patches ranked by the
model's own text tower when a slide has more patches than the limits keep), generates the
answer and scores the evidence for it (:mod:`pathmllm.models.hierarchy.evidence`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathmllm.data.slide_qa_formats import LETTERS

__all__ = ["SlideAnswer", "ask_slide", "evidence_text", "load_slide_model"]


@dataclass
class SlideAnswer:
    """What :func:`ask_slide` returns (``to_dict`` is the ``--json`` output)."""

    slide: str
    question: str
    answer: str
    evidence: Any
    store: str
    options: list[str] | None = None
    heatmap: str | None = None
    n_regions: int = 0
    n_patches: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slide": self.slide, "question": self.question, "options": self.options, "answer": self.answer,
            "evidence": self.evidence.to_dict(), "heatmap": self.heatmap, "store": self.store,
            "n_regions": self.n_regions, "n_patches": self.n_patches, "timings": self.timings,
        }


def load_slide_model(folder: str | os.PathLike[str], *, device: str = "auto") -> tuple[Any, Any]:
    """``(HierarchicalSlideLM, SlidePipelineSpec)`` from a folder written by ``pathmllm train slide``."""
    from pathmllm.models.hierarchy.pipeline import load_spec
    from pathmllm.models.hierarchy.slide_lm import HierarchicalSlideLM

    spec = load_spec(folder)
    model = HierarchicalSlideLM.from_pretrained(folder, device=device)
    model.eval()
    return model, spec


def evidence_text(answer: str, options: list[str] | None) -> str:
    """The text evidence is scored against: the chosen option's text for a letter answer."""
    if options:
        from pathmllm.bench.text_metrics import closed_answer_letter

        letter = closed_answer_letter(answer, options)
        if letter is not None:
            return options[LETTERS.index(letter)]
    return answer


def question_with_options(question: str, options: list[str] | None) -> str:
    if not options:
        return question
    return question + "".join(f"\n{LETTERS[i]}) {o}" for i, o in enumerate(options))


@torch.no_grad()
def ask_slide(
    model: Any,
    spec: Any,
    slide: str | os.PathLike[str],
    question: str,
    stores: str | os.PathLike[str],
    *,
    options: list[str] | None = None,
    mpp: float | None = None,
    max_new_tokens: int = 64,
    top_regions: int = 5,
    top_patches: int = 10,
    heatmap: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> SlideAnswer:
    """Answer ``question`` about ``slide`` (see the module docstring).

    ``heatmap``: where to write the evidence heatmap PNG (None: not written). Raises
    ``ValueError`` for a question that does not fit the LM's context (checked before any
    slide work), and the preprocessing errors (no tissue, unreadable slide, missing µm/px).
    """
    import time

    from pathmllm.models.hierarchy.evidence import heatmap_image, score_evidence
    from pathmllm.models.hierarchy.pipeline import format_prompt, prepare_slide, read_hierarchy
    from pathmllm.models.hierarchy.store_batch import collate_hierarchy
    from pathmllm.wsi.store import SlideStore

    if not question.strip():
        raise ValueError("the question is empty")
    if len(LETTERS) < len(options or []):
        raise ValueError(f"at most {len(LETTERS)} options")
    full_question = question_with_options(question, options)
    prompt = format_prompt(spec, model.tokenizer, full_question, model.slide_token)
    n_text = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"]) - 1
    model._check_context(n_text, extra=max_new_tokens)  # before minutes of preprocessing

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    store = prepare_slide(slide, stores, spec, mpp=mpp, device=device)
    timings["prepare_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    q_vec = model.embed_texts([full_question])[0]

    def to_text_space(feats: np.ndarray) -> np.ndarray:
        enc = model.encoder
        x = torch.from_numpy(np.asarray(feats, np.float32)).to(q_vec.device)
        return enc.projectors("patch", enc.patch_in(x)).float().cpu().numpy()

    hierarchy = read_hierarchy(store, spec, question_vec=q_vec.float().cpu().numpy(), selection_map=to_text_space)
    batch = collate_hierarchy([hierarchy]).to(q_vec.device)
    answer = model.generate(batch, [prompt], max_new_tokens=max_new_tokens)[0].strip()
    output = model.encoder(batch)
    chosen = evidence_text(answer, options) or full_question
    text_vec = model.embed_texts([chosen])[0]
    others = [o for o in (options or []) if o != chosen]
    alternatives = model.embed_texts(others) if options and chosen in options and others else None
    evidence = score_evidence(hierarchy, output, text_vec, top_regions=top_regions, top_patches=top_patches,
                              alternatives=alternatives)
    timings["answer_s"] = round(time.perf_counter() - t0, 3)

    heat_path = None
    if heatmap is not None:
        s = SlideStore.open(store)
        img = heatmap_image(s.path(SlideStore.THUMBNAIL), int(s.manifest()["slide"]["dimensions"][0]), evidence)
        heat_path = Path(heatmap)
        heat_path.parent.mkdir(parents=True, exist_ok=True)
        img.save(heat_path)
        heat_path = str(heat_path)
    return SlideAnswer(
        slide=str(slide), question=question, answer=answer, evidence=evidence, store=str(store), options=options,
        heatmap=heat_path, n_regions=hierarchy.n_regions, n_patches=int(sum(hierarchy.n_patches)), timings=timings,
    )
