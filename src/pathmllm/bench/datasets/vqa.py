"""Quilt-VQA and PathMMU: image + question queries, for composed retrieval and multiple choice.

Quilt-VQA (huggingface.co/datasets/wisdomik/Quilt_VQA): ``quiltvqa_test_wo_ans.jsonl`` (one
``{question_id, image, text}`` per line) and ``quiltvqa_test_w_ans.json`` (a list aligned *by
position* with the JSONL: ``answer``, ``answer_type``, ``yes_no_answer`` on CLOSED rows), with the
images of ``quilt_vqa.zip`` (unzipped or not; the member prefix is probed). The Hub's parquet
(``data/train-...parquet``: ``image``, ``question``, ``answer``, ``answer_type``, ``context``) is
named ``train`` but is the test set; it serves as the image source (keyed by image name) or, alone,
as the question set.

PathMMU (huggingface.co/datasets/jamessyx/PathMMU): ``data.json``, ``{subset: {split: [{"No",
"img", "question", "options": ["A) ...", ...], "answer": "A) ...", "explanation", ...}]}}``, with
``images/`` (a folder or a zip). The answer is the full option string (exact match). SocialPath
images must be fetched from Twitter and PathCLS images rebuilt from the source datasets, so
partial image folders are normal: questions whose image is absent are skipped and counted per
subset, as PathMMU's own evaluation does.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathmllm.bench.datasets.base import (
    IMAGE_SUFFIXES,
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    SplitNotAvailableError,
    VQASet,
    ZipImage,
    find_dir,
    is_junk,
    note,
    register_dataset,
    report_missing,
    require_images,
)

log = logging.getLogger(__name__)
_OPTION = re.compile(r"^\s*\(?([A-Z])[).:]\s*")

QUILT_QUESTIONS = "quiltvqa_test_wo_ans.jsonl"
QUILT_ANSWERS = "quiltvqa_test_w_ans.json"
QUILT_ZIP = "quilt_vqa.zip"
#: where the images may sit, unzipped or inside quilt_vqa.zip (the member prefix is inferred, so probed)
QUILT_IMAGE_DIRS = ("quilt_vqa/images", "images", "quilt_vqa", "")


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"{name}: {path} is not valid JSON ({exc})") from None


def zip_images(path: Path) -> dict[str, str]:
    """Image members of a zip by base name (``__MACOSX`` and hidden members skipped); the member
    prefix does not matter."""
    with zipfile.ZipFile(path) as z:
        members = z.namelist()
    out: dict[str, str] = {}
    for m in members:
        parts = m.split("/")
        if m.endswith("/") or any(is_junk(p) for p in parts) or Path(m).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        out.setdefault(parts[-1], m)
    return out


def _image_resolver(base: Path) -> tuple[Callable[[str], ImageRef | None], str]:
    """A function image name -> reference, trying the unzipped folders, then quilt_vqa.zip, then
    the Hub parquet (rows keyed by their image's file name); and where it looked."""
    dirs = [base / d for d in QUILT_IMAGE_DIRS if (base / d).is_dir()]
    zip_path = base / QUILT_ZIP
    members = zip_images(zip_path) if zip_path.is_file() else {}
    parquet: dict[str, ImageRef] = {}
    from pathmllm.bench.datasets.hf_parquet import (
        find_parquet_splits,
        image_column,
        image_paths,
        image_refs,
    )

    for files in find_parquet_splits(base).values():
        col = image_column(files[0])
        for ref, path in zip(image_refs(files, col), image_paths(files, col)):
            if path:
                parquet.setdefault(Path(path).name, ref)

    def resolve(image: str) -> ImageRef | None:
        for d in dirs:
            if (d / image).is_file():
                return str(d / image)
        base_name = Path(image).name
        if base_name in members:
            return ZipImage(str(zip_path), members[base_name])
        return parquet.get(base_name)

    where = ", ".join([*(str(d) for d in dirs), *([str(zip_path)] if members else []),
                       *(["the Hub parquet"] if parquet else [])]) or f"{base} (no image folder, zip or parquet)"
    return resolve, where


def _read_jsonl(path: Path) -> list[Any]:
    """One entry per non-blank line: the object, or ``None`` for a line that is not valid JSON."""
    out: list[Any] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append(None)
    return out


def load_quilt_vqa(root: Path, split: str | None = None) -> VQASet:
    """The 1,283 test QA pairs (question and image from the JSONL, answer from the JSON at the same
    position), or the Hub parquet's 985 rows when the JSON files are absent."""
    name = "quilt-vqa"
    if split not in (None, "test"):
        raise SplitNotAvailableError(f"{name}: Quilt-VQA is a test set only (the Hub parquet's 'train' split is the "
                                     "test set)")
    from pathmllm.bench.datasets.hf_parquet import find_parquet_splits

    base = find_dir(root, lambda d: any((d / f).is_file() for f in (QUILT_ANSWERS, QUILT_QUESTIONS, QUILT_ZIP))) \
        or find_dir(root, lambda d: bool(find_parquet_splits(d, max_depth=1)), max_depth=2)
    if base is None:
        raise DatasetLayoutError(f"{name}: expected {QUILT_QUESTIONS} and {QUILT_ANSWERS} (with the images of "
                                 f"{QUILT_ZIP}) or the Hub's data/*.parquet in {root}")
    notes: list[str] = []
    answers_file, questions_file = base / QUILT_ANSWERS, base / QUILT_QUESTIONS
    if not answers_file.is_file():
        hf = find_parquet_splits(base)
        if not hf:
            raise DatasetLayoutError(f"{name}: expected {QUILT_ANSWERS} in {base} (beside {QUILT_QUESTIONS}), or the "
                                     "Hub's data/*.parquet")
        return _quilt_parquet(name, [f for fs in hf.values() for f in fs], notes)
    answers = _read_json(answers_file, name)
    if not isinstance(answers, list):
        raise DatasetLayoutError(f"{name}: {answers_file} must be a JSON list (aligned by position with "
                                 f"{QUILT_QUESTIONS})")
    if questions_file.is_file():
        questions = _read_jsonl(questions_file)
        if len(questions) != len(answers):
            raise DatasetLayoutError(f"{name}: {QUILT_QUESTIONS} has {len(questions)} records but {QUILT_ANSWERS} "
                                     f"{len(answers)}; they are aligned by position, so they must be the same length")
    elif answers and all(isinstance(a, dict) and "image" in a and ("text" in a or "question" in a) for a in answers):
        questions = answers  # an answers file that carries image and question itself
    else:
        raise DatasetLayoutError(f"{name}: expected {QUILT_QUESTIONS} in {base} (question and image of each record; "
                                 f"{QUILT_ANSWERS} holds only the answers, aligned by position)")
    resolve, where = _image_resolver(base)
    images: list[ImageRef] = []
    texts, answer_texts, missing, malformed = [], [], [], []
    for i, (q, a) in enumerate(zip(questions, answers)):
        question = str((q.get("text") or q.get("question") or "") if isinstance(q, dict) else "").strip()
        image = str(q.get("image") or "").strip() if isinstance(q, dict) else ""
        answer = str(a.get("answer") or "").strip() if isinstance(a, dict) else ""
        if not (question and image and answer):
            malformed.append(f"#{i}")
            continue
        ref = resolve(image)
        if ref is None:
            missing.append(image)
            continue
        images.append(ref)
        texts.append(question)
        answer_texts.append(answer)
    if malformed:
        note(name, notes, f"{len(malformed)} record(s) without image, question or answer skipped: "
                          f"{', '.join(malformed[:5])}")
    report_missing(name, missing, len(questions), where, "questions", notes)
    require_images(name, images, where, "questions")
    return VQASet(name, images, texts, answer_texts, notes=notes)


def _quilt_parquet(name: str, files: list[Path], notes: list[str]) -> VQASet:
    from pathmllm.bench.datasets.hf_parquet import image_column, image_refs, read_columns

    col = image_column(files[0])
    data = read_columns(files, ["question", "answer"])
    images: list[ImageRef] = []
    questions, answers = [], []
    skipped = 0
    for ref, q, a in zip(image_refs(files, col), data["question"], data["answer"]):
        if not str(q or "").strip() or not str(a or "").strip():
            skipped += 1
            continue
        images.append(ref)
        questions.append(str(q).strip())
        answers.append(str(a).strip())
    if skipped:
        note(name, notes, f"{skipped} parquet row(s) without question or answer skipped")
    note(name, notes, f"read the Hub parquet ({len(images)} rows; its 'train' split is the test set)", logging.INFO)
    require_images(name, images, files[0].parent, "parquet rows")
    return VQASet(name, images, questions, answers, notes=notes)


register_dataset(DatasetInfo(
    "quilt-vqa", "vqa", load_quilt_vqa, folders=("Quilt_VQA", "Quilt-VQA", "quilt_vqa"),
    url="https://huggingface.co/datasets/wisdomik/Quilt_VQA (gated: accept the terms first)",
    layout=f"{QUILT_QUESTIONS} ({{question_id, image, text}} per line) + {QUILT_ANSWERS} ([{{answer, answer_type, "
           f"yes_no_answer}}], aligned by position) + images from {QUILT_ZIP} (unzipped or not); or the Hub's "
           "data/train-*.parquet (image, question, answer, answer_type, context; 'train' is the test set)",
    reference="Seyfioglu et al. 2024, CVPR (Quilt-LLaVA)", licence="CC-BY-NC-ND-3.0", splits=("test",),
    description="1,283 test QA pairs (940 open, 343 closed) on 985 images from narrated histopathology videos"))


def strip_option(text: str) -> tuple[str | None, str]:
    """'B) Skeletal muscle' -> ('B', 'Skeletal muscle'); text without a letter -> (None, text)."""
    m = _OPTION.match(text)
    return (m.group(1), text[m.end():].strip()) if m else (None, text.strip())


PATHMMU_SUBSETS = ("PubMed", "SocialPath", "EduContent", "Atlas", "PathCLS")
PATHMMU_SPLITS = ("val", "test", "test_tiny")
_PATHMMU_KEYS = ("img", "question", "options", "answer")


def _pathmmu_images(base: Path) -> tuple[Callable[[str], ImageRef | None], Path]:
    """``images/<img>`` from the folder, or from ``images.zip`` when that is what was downloaded."""
    folder, zip_path = base / "images", base / "images.zip"
    members = zip_images(zip_path) if zip_path.is_file() else {}

    def resolve(img: str) -> ImageRef | None:
        if (folder / img).is_file():
            return str(folder / img)
        name = Path(img).name
        return ZipImage(str(zip_path), members[name]) if name in members else None

    if not folder.is_dir() and not members:
        raise DatasetLayoutError(f"pathmmu: expected the folder {folder} (or images.zip) beside data.json")
    return resolve, folder if folder.is_dir() else zip_path


def load_pathmmu(root: Path, split: str | None = None) -> VQASet:
    """Every subset's ``split`` (default ``test``) questions whose image is present. The answer is
    the option string it equals (exact match); malformed records are skipped and counted."""
    name, split = "pathmmu", split or "test"
    if split not in PATHMMU_SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; use one of {', '.join(PATHMMU_SPLITS)}")
    base = find_dir(root, lambda d: (d / "data.json").is_file())
    if base is None:
        raise DatasetLayoutError(f"{name}: expected data.json in {root} (with images/)")
    table = base / "data.json"
    resolve, where = _pathmmu_images(base)
    data = _read_json(table, name)
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{name}: {table} must map subset names to {{split: [questions]}}")
    notes: list[str] = []
    images: list[ImageRef] = []
    questions, answers, options, answer_index = [], [], [], []
    for subset, splits in data.items():
        if not isinstance(splits, dict):
            note(name, notes, f"{subset}: not a {{split: [questions]}} object; skipped")
            continue
        rows = splits.get(split) or []
        kept, absent, malformed = 0, 0, []
        for r in rows if isinstance(rows, list) else []:
            no = r.get("No", "?") if isinstance(r, dict) else "?"
            if not isinstance(r, dict) or not all(k in r for k in _PATHMMU_KEYS) or not isinstance(r["options"], list) \
                    or not r["options"]:
                malformed.append(f"No {no} (lacks {', '.join(_PATHMMU_KEYS)})")
                continue
            opts = [str(o) for o in r["options"]]
            answer = str(r["answer"])
            stripped = [o.strip() for o in opts]
            if answer.strip() not in stripped:
                malformed.append(f"No {no} (answer {answer!r} is none of its options)")
                continue
            idx = stripped.index(answer.strip())
            ref = resolve(str(r["img"]))
            if ref is None:
                absent += 1
                continue
            texts = [strip_option(o)[1] for o in opts]
            images.append(ref)
            questions.append(str(r["question"]).strip())
            answers.append(texts[idx])
            options.append(texts)
            answer_index.append(idx)
            kept += 1
        if malformed:
            note(name, notes, f"{subset}/{split}: {len(malformed)} malformed record(s) skipped: "
                              f"{'; '.join(malformed[:3])}")
        if absent:
            note(name, notes, f"{subset}/{split}: {absent} of {len(rows)} questions have no image in {where}; left out")
        if subset == "PathCLS" and kept:
            note(name, notes, f"PathCLS/{split}: its images are rebuilt from 8 PMEB classification sets (BACH, CRC-100K, "
                              "LC25000, Osteo, SICAPv2, SkinCancer, WSSS4LUAD; plus MHIST): they overlap them", logging.INFO)
    require_images(name, images, where, f"{split!r} questions of {table.name}")
    return VQASet(name, images, questions, answers, options, answer_index, notes=notes)


register_dataset(DatasetInfo(
    "pathmmu", "vqa", load_pathmmu, folders=("PathMMU", "pathmmu"),
    url="https://huggingface.co/datasets/jamessyx/PathMMU (gated) and github.com/PathMMU-Benchmark/PathMMU",
    layout="data.json ({PubMed,SocialPath,EduContent,Atlas,PathCLS: {val,test,test_tiny: [{No, img, question, "
           "options ['A) ...'], answer (the full option string), explanation, source_img}]}}) + images/ (or images.zip)",
    reference="Sun et al. 2024, ECCV (PathMMU)", licence="CC-BY-ND-4.0", splits=PATHMMU_SPLITS,
    description="expert-validated multiple-choice pathology questions (PubMed, SocialPath, EduContent, Atlas, PathCLS)"))
