"""Quilt-VQA and PathMMU: image + question queries, for composed retrieval and multiple choice.

Quilt-VQA (huggingface.co/datasets/wisdomik/Quilt_VQA): ``quiltvqa_test_w_ans.json``, a list of
``{"image", "question", "answer", "answer_type", ...}``, with the images of ``quilt_vqa.zip``
(``quilt_vqa/images/`` or ``images/``).

PathMMU (huggingface.co/datasets/jamessyx/PathMMU): ``data.json``, ``{subset: {split: [{"No",
"img", "question", "options": ["A) ...", ...], "answer": "A) ...", ...}]}}``, with ``images/``.
Its SocialPath images must be fetched from Twitter and PathCLS images rebuilt from the source
datasets, so partial image folders are normal: questions whose image is absent are left out with
a warning per subset, as PathMMU's own evaluation does.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pathmllm.bench.datasets.base import (
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    VQASet,
    first_existing,
    register_dataset,
    report_missing,
)

log = logging.getLogger(__name__)
_OPTION = re.compile(r"^\s*\(?([A-Z])[).:]\s*")


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{name}: {path} is not valid JSON ({exc})") from None


def load_quilt_vqa(root: Path, split: str | None = None) -> VQASet:
    name = "quilt-vqa"
    table = first_existing(root, ("quiltvqa_test_w_ans.json",))
    if table is None:
        raise DatasetLayoutError(f"{name}: expected quiltvqa_test_w_ans.json in {root} (with the images of quilt_vqa.zip)")
    images_dir = first_existing(root, ("quilt_vqa/images", "images", "quilt_vqa"))
    if images_dir is None:
        raise DatasetLayoutError(f"{name}: expected the images of quilt_vqa.zip in {root / 'quilt_vqa/images'} "
                                 f"(or {root / 'images'}); unzip quilt_vqa.zip in {root}")
    rows = _read_json(table, name)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"image", "answer"} <= set(r) for r in rows):
        raise DatasetLayoutError(f"{name}: {table} must be a list of objects with 'image', 'question' and 'answer'")
    images: list[ImageRef] = []
    questions, answers, missing = [], [], []
    for r in rows:
        p = images_dir / str(r["image"])
        if not p.is_file():
            missing.append(str(r["image"]))
            continue
        question = str(r.get("question") or r.get("text") or "").strip()
        if not question or not str(r["answer"]).strip():
            continue
        images.append(str(p))
        questions.append(question)
        answers.append(str(r["answer"]).strip())
    report_missing(name, missing, len(rows), images_dir, f"questions of {table.name}")
    return VQASet(name, images, questions, answers)


register_dataset(DatasetInfo(
    "quilt-vqa", "vqa", load_quilt_vqa, folders=("Quilt_VQA", "Quilt-VQA", "quilt_vqa"),
    url="https://huggingface.co/datasets/wisdomik/Quilt_VQA (gated: accept the terms first)",
    layout="quiltvqa_test_w_ans.json ([{image, question, answer, answer_type}]) + quilt_vqa/images/ (from quilt_vqa.zip)",
    reference="Seyfioglu et al. 2024, CVPR (Quilt-LLaVA)", licence="CC-BY-NC-ND-3.0",
    description="985 image + question pairs with free-text answers from narrated histopathology videos"))


def strip_option(text: str) -> tuple[str | None, str]:
    """'B) Skeletal muscle' -> ('B', 'Skeletal muscle'); text without a letter -> (None, text)."""
    m = _OPTION.match(text)
    return (m.group(1), text[m.end():].strip()) if m else (None, text.strip())


def load_pathmmu(root: Path, split: str | None = None) -> VQASet:
    """Every subset's ``split`` (default ``test``) questions whose image is present."""
    name, split = "pathmmu", split or "test"
    table = root / "data.json"
    if not table.is_file():
        raise DatasetLayoutError(f"{name}: expected data.json in {root} (with images/)")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DatasetLayoutError(f"{name}: expected the folder {images_dir} beside data.json")
    data = _read_json(table, name)
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{name}: {table} must map subset names to {{split: [questions]}}")
    images: list[ImageRef] = []
    questions, answers, options, answer_index = [], [], [], []
    for subset, splits in sorted(data.items()):
        rows = splits.get(split, []) if isinstance(splits, dict) else []
        kept = 0
        for r in rows:
            if not {"img", "question", "options", "answer"} <= set(r):
                raise DatasetLayoutError(f"{name}: {subset}/{split} item {r.get('No', '?')} lacks img, question, "
                                         "options or answer")
            p = images_dir / str(r["img"])
            if not p.is_file():
                continue
            letters_texts = [strip_option(str(o)) for o in r["options"]]
            letter, answer_text = strip_option(str(r["answer"]))
            texts = [t for _, t in letters_texts]
            letters = [lt for lt, _ in letters_texts]
            if letter in letters:
                idx = letters.index(letter)
            elif answer_text in texts:
                idx = texts.index(answer_text)
            else:
                raise DatasetLayoutError(f"{name}: {subset}/{split} item {r.get('No', '?')}: answer "
                                         f"{r['answer']!r} is none of its options")
            images.append(str(p))
            questions.append(str(r["question"]).strip())
            answers.append(texts[idx])
            options.append(texts)
            answer_index.append(idx)
            kept += 1
        if rows and kept < len(rows):
            log.warning("%s: %s/%s: %d of %d questions have no image in %s; left out", name, subset, split,
                        len(rows) - kept, len(rows), images_dir)
    if not images:
        raise DatasetLayoutError(f"{name}: no {split!r} question of {table.name} has its image in {images_dir}")
    return VQASet(name, images, questions, answers, options, answer_index)


register_dataset(DatasetInfo(
    "pathmmu", "vqa", load_pathmmu, folders=("PathMMU", "pathmmu"),
    url="https://huggingface.co/datasets/jamessyx/PathMMU (gated) and github.com/PathMMU-Benchmark/PathMMU",
    layout="data.json ({subset: {split: [{img, question, options, answer}]}}) + images/",
    reference="Sun et al. 2024, ECCV (PathMMU)", licence="CC-BY-ND-4.0", splits=("val", "test", "test_tiny"),
    description="expert-validated multiple-choice pathology questions (PubMed, SocialPath, EduContent, Atlas, PathCLS)"))
