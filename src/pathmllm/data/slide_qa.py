"""Slide question-answer records: read the published slide-QA datasets, resolve their slides,
write our own normalised JSONL.

Readers (``FORMATS.md`` §3), chosen by ``fmt`` or detected from the file name and first record:

- ``"wsi-bench"``: WSI-LLaVA's ``dataset/<Task>_{test,train}.json`` (and the old consolidated
  ``WSI-Bench_test.json``); the slide is the stem of ``image`` (``TCGA-...-DX1.<UUID>``), else
  ``id`` minus its ``-<n>``; the task is the file stem minus ``_test``/``_train``.
- ``"hwsi-jsonl"``: what MLLM-HWSI reads: a JSON list, one object or JSONL, each row either a
  conversation (first ``human``/``user`` and ``gpt``/``assistant`` turns) or
  ``{question_id, question, T-answer, metadata[, slide_id]}``.
- ``"slideinstruction"``: SlideChat's ``SlideInstruct_train_stage{1_caption,2_vqa}.json``; the
  slide is the truncated barcode of ``image[0]``, its folder the tumour code.
- ``"slidebench"``: ``SlideBench-{VQA,Caption}-*.csv`` (TCGA and BCNB layouts), and TC-SSA's
  ``slidebench_test.json`` conversion.
- ``"wsi-vqa"``: ``WsiVQA_{train,val,test}.json``; the slide is the case's ``DX1``.
- ``"pathmllm"``: our own normalised JSONL, below.

Every reader returns ``(records, problems)`` and never raises for a bad record: it is skipped,
and a :class:`SlideQAProblem` names ``file:line`` and the reason. Problems with ``skipped=False``
are notes on kept records (duplicate ids, answers matched only after normalisation).

**Normalised JSONL** (:func:`write_slide_qa_jsonl`, read back with ``fmt="pathmllm"``): one
object per line with the keys of :class:`SlideQARecord`::

    {"slide_id": "TCGA-AA-0000-01Z-00-DX1.0A1B...", "slide_match": "stem",
     "question": "What is the diagnosis?", "answer": "B",
     "options": ["...", "...", "..."], "answer_label": "B",   # options/label null when open
     "task": "Diagnosis_choice", "is_report": false,
     "record_id": "TCGA-...-1", "image": "TCGA-BRCA/....pt", "tumor": null,
     "source": "Diagnosis_choice_test.json", "line": 12, "index": 3}

``slide_match`` says how :func:`resolve_slide` maps ``slide_id`` to a file: ``stem`` (exact stem,
case-insensitive, then barcode prefix), ``contains`` (longest known slide id inside it),
``barcode`` (truncated ``TCGA-...-DX<k>``), ``patient`` (BCNB ``<n>``), ``case`` (12-char
case id: its ``DX1`` slide).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pathmllm.data.records import RecordProblem
from pathmllm.data.slide_qa_formats import (
    LETTERS,
    answer_key,
    find_turn,
    iter_rows,
    letter_of,
    normalize_text,
    split_inline_options,
    strip_image_token,
)

Format = Literal["auto", "wsi-bench", "hwsi-jsonl", "slideinstruction", "slidebench", "wsi-vqa", "pathmllm"]
SlideMatch = Literal["stem", "contains", "barcode", "patient", "case"]
FORMATS = ("wsi-bench", "hwsi-jsonl", "slideinstruction", "slidebench", "wsi-vqa", "pathmllm")
HUMAN = ("human", "user")
GPT = ("gpt", "assistant")
REPORT_TASKS = {"1_report", "report", "caption"}
_BARCODE = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-[A-Z0-9]{3}-[A-Z0-9]{2,3}-[A-Z]{2}\d+)", re.IGNORECASE)


@dataclass
class SlideQARecord:
    """One question about one slide."""

    slide_id: str
    """The slide reference as the dataset writes it (see ``slide_match``)."""
    question: str
    """The question stem: ``<image>`` and inline options removed, whitespace normalised."""
    answer: str
    """The answer as given (stripped): a letter, option text, Yes/No or free text."""
    options: list[str] | None = None
    """Option texts in order A, B, ...; None for an open question."""
    answer_label: str | None = None
    """The option letter when closed; ``Yes``/``No`` for a true/false question; else None."""
    task: str | None = None
    """Task or category: WSI-Bench file stem, MLLM-HWSI ``metadata``, SlideBench ``Broad - Narrow``."""
    is_report: bool = False
    """True when the answer is a report or caption paragraph."""
    source: str = ""
    """The file the record came from."""
    line: int = 0
    """1-based line where the record starts (CSV: the file line of the row)."""
    index: int = 0
    """Position in the file; ``(source, index)`` is the record's key (ids repeat, §3.7 kind 6)."""
    slide_match: SlideMatch = "stem"
    record_id: str | None = None
    image: str | None = None
    """The dataset's feature-file reference (``.pt``, ``.csv``), if any."""
    tumor: str | None = None
    """TCGA project code without ``TCGA-`` where the dataset gives it."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.index)

    @property
    def is_closed(self) -> bool:
        return self.options is not None

    @property
    def answer_text(self) -> str:
        """The option text for a closed question, else the answer."""
        if self.options and self.answer_label in LETTERS[: len(self.options)]:
            return self.options[LETTERS.index(self.answer_label)]
        return self.answer

    def prompt(self, delimiter: str = ")") -> str:
        """The question with its options, ``A) x B) y`` (or ``A. x`` as SlideChat), one per line."""
        if not self.options:
            return self.question
        return self.question + "".join(f"\n{LETTERS[i]}{delimiter} {o}" for i, o in enumerate(self.options))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d


SlideQAProblem = RecordProblem
"""Alias of :class:`pathmllm.data.records.RecordProblem`."""


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[SlideQARecord] = []
        self.problems: list[SlideQAProblem] = []

    def skip(self, line: int, reason: str) -> None:
        self.problems.append(SlideQAProblem(str(self.path), line, reason, True))

    def note(self, line: int, reason: str) -> None:
        self.problems.append(SlideQAProblem(str(self.path), line, reason, False))

    def rows(self) -> Iterable[tuple[int, int, dict[str, Any]]]:
        for line, index, obj, error in iter_rows(self.path):
            if error is not None:
                self.skip(line, error)
            elif not isinstance(obj, dict):
                self.skip(line, f"expected a JSON object, got {type(obj).__name__}")
            else:
                yield line, index, obj


# ---------------------------------------------------------------------------------------------- API
def read_slide_qa(
    path: str | os.PathLike[str], fmt: Format = "auto"
) -> tuple[list[SlideQARecord], list[SlideQAProblem]]:
    """Read one slide-QA file (``FORMATS.md`` §3) into records, skipping and reporting bad ones.

    Raises only for a missing file or an unknown ``fmt`` (or one ``auto`` cannot detect).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown slide-QA format {fmt!r}; choose from {('auto', *FORMATS)}")
    reader = _Reader(path)
    {
        "wsi-bench": _read_wsi_bench,
        "hwsi-jsonl": _read_hwsi,
        "slideinstruction": _read_slideinstruction,
        "slidebench": _read_slidebench,
        "wsi-vqa": _read_wsi_vqa,
        "pathmllm": _read_pathmllm,
    }[fmt](reader)
    _note_duplicates(reader)
    return reader.records, reader.problems


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name, else from its first record."""
    name = path.name.casefold()
    if name.endswith((".csv", ".tsv")):
        return "slidebench"
    if name.startswith("slideinstruct") or name == "train_data_example.json":
        return "slideinstruction"
    if name.startswith("wsivqa"):
        return "wsi-vqa"
    for _, _, obj, _ in iter_rows(path):
        if not isinstance(obj, dict):
            continue
        if "slide_match" in obj:
            return "pathmllm"
        if "Id" in obj and "Question" in obj:
            return "wsi-vqa"
        if "choices" in obj and "slide_id" in obj:
            return "slidebench"
        if "T-answer" in obj or "question_id" in obj:
            return "hwsi-jsonl"
        if "conversations" in obj:
            image = obj.get("image")
            if isinstance(image, list) or str(obj.get("id", "")).startswith("train::"):
                return "slideinstruction"
            return "wsi-bench"
    raise ValueError(f"{path}: cannot tell the slide-QA format; pass fmt= one of {FORMATS}")


def write_slide_qa_jsonl(records: Iterable[SlideQARecord], path: str | os.PathLike[str]) -> Path:
    """Write records as normalised JSONL (module docstring), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def slide_barcode(stem: str) -> str:
    """``TCGA-XX-XXXX-01Z-00-DX1`` of a full stem (upper case); other names unchanged, casefolded."""
    m = _BARCODE.match(stem)
    return m.group(1).upper() if m else stem.casefold()


def index_slides(folder: str | os.PathLike[str], suffixes: Iterable[str] | None = None) -> dict[str, Path]:
    """``{stem: path}`` of the slide files under ``folder`` (recursively), for :func:`resolve_slide`."""
    allowed = {s.lower() for s in suffixes} if suffixes else None
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and (allowed is None or p.suffix.lower() in allowed):
            out.setdefault(p.stem if p.suffix.lower() != ".gz" else Path(p.stem).stem, p)
    return out


def resolve_slide(record: SlideQARecord, slides: dict[str, Path]) -> Path | None:
    """The file of ``record``'s slide among ``slides`` (``{slide id or stem: path}``), per §3.6.

    ``stem``: exact stem, UUID case-insensitive, else the one slide sharing its barcode prefix;
    ``contains``: the longest known id inside the reference (and ``record_id``/``image``);
    ``barcode``: the slides whose barcode prefix matches (first in sorted order);
    ``patient``: the BCNB number; ``case``: the case's ``DX1`` slide. None when nothing matches.
    """
    folded = {k.casefold(): v for k, v in slides.items()}
    ref = record.slide_id.casefold()
    if record.slide_match in ("stem", "patient") and ref in folded:
        return folded[ref]
    if record.slide_match == "patient":
        return None
    if record.slide_match == "contains":
        texts = [t.casefold() for t in (record.slide_id, record.record_id, record.image) if t]
        hits = [k for k in folded if any(k in t for t in texts)]
        return folded[max(hits, key=len)] if hits else None
    if record.slide_match == "case":
        hits = sorted(k for k in folded if k.startswith(ref + "-") and re.search(r"-dx1(\.|$)", k))
        return folded[hits[0]] if hits else None
    barcode = slide_barcode(record.slide_id).casefold()
    hits = sorted(k for k in folded if slide_barcode(k).casefold() == barcode)
    if record.slide_match == "stem" and len(hits) != 1:
        return None
    return folded[hits[0]] if hits else None


def exclude_slides(
    records: Iterable[SlideQARecord], held_out: Iterable[SlideQARecord]
) -> list[SlideQARecord]:
    """``records`` without those on any slide of ``held_out`` (compared by barcode; §3.7 kind 7:
    WSI-Bench test slides recur in train files, often with a paraphrased question)."""
    banned = {slide_barcode(r.slide_id) for r in held_out}
    return [r for r in records if slide_barcode(r.slide_id) not in banned]


# -------------------------------------------------------------------------------------------- readers
def _task_from_name(path: Path) -> str | None:
    stem = re.sub(r"_(test|train|val)$", "", path.stem, flags=re.IGNORECASE)
    return None if stem.casefold().startswith("wsi-bench") else stem


def _closed(
    reader: _Reader, line: int, question: str, answer: str, options: list[str] | None
) -> tuple[str, list[str] | None, str | None] | None:
    """(question, options, label) or None when the record must be skipped (reported)."""
    if options is None:
        yes_no = normalize_text(answer).rstrip(".").casefold()
        label = yes_no.capitalize() if yes_no in ("yes", "no") else None
        return question, None, label
    label = letter_of(answer, options)
    if label is None:
        reader.skip(line, f"answer {answer[:40]!r} names none of the {len(options)} options")
        return None
    return question, options, label


def _conversation_qa(reader: _Reader, line: int, obj: dict[str, Any]) -> tuple[str, str] | None:
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        reader.skip(line, "no 'conversations' list")
        return None
    q, a = find_turn(conv, HUMAN), find_turn(conv, GPT)
    if q is None:
        reader.skip(line, "no human turn")
        return None
    if a is None:
        reader.skip(line, "no gpt turn")
        return None
    q, a = normalize_text(strip_image_token(q)), a.strip()
    if not q:
        reader.skip(line, "empty question")
        return None
    if not a:
        reader.skip(line, "empty answer")
        return None
    return q, a


def _read_wsi_bench(reader: _Reader) -> None:
    task = _task_from_name(reader.path)
    for line, index, obj in reader.rows():
        qa = _conversation_qa(reader, line, obj)
        if qa is None:
            continue
        image = obj.get("image")
        rid = str(obj["id"]) if obj.get("id") is not None else None
        if isinstance(image, str) and image.strip():
            slide = Path(image.strip()).name
            slide = slide[: -len(".pt")] if slide.endswith(".pt") else Path(slide).stem
        elif rid:
            slide = re.sub(r"-\d+$", "", rid)
        else:
            reader.skip(line, "no 'image' or 'id' to name the slide")
            continue
        stem, options, _ = split_inline_options(qa[0])
        closed = _closed(reader, line, stem, qa[1], options)
        if closed is None:
            continue
        reader.records.append(
            SlideQARecord(
                slide_id=slide, question=closed[0], answer=qa[1], options=closed[1], answer_label=closed[2],
                task=task, is_report=(task or "").casefold() in REPORT_TASKS, source=str(reader.path),
                line=line, index=index, slide_match="stem", record_id=rid,
                image=image if isinstance(image, str) else None,
            )
        )


def _read_hwsi(reader: _Reader) -> None:
    for line, index, obj in reader.rows():
        rid = obj.get("question_id", obj.get("id"))
        rid = str(rid) if rid is not None else None
        if "conversations" in obj:
            qa = _conversation_qa(reader, line, obj)
            if qa is None:
                continue
            question, answer = qa
        else:
            question = normalize_text(strip_image_token(str(obj.get("question") or "")))
            answer = str(obj.get("T-answer") or obj.get("answer") or "").strip()
            if not question or not answer:
                reader.skip(line, f"missing {'question' if not question else 'T-answer'}")
                continue
        image = obj.get("image") if isinstance(obj.get("image"), str) else None
        if obj.get("slide_id"):
            slide, match = str(obj["slide_id"]), "stem"
        elif image or rid:
            # MLLM-HWSI: Path(image).stem if that slide exists, else a known id inside id/image
            slide, match = (Path(image).stem if image else rid), "contains"
        else:
            reader.skip(line, "no slide_id, question_id, id or image to find the slide")
            continue
        task = obj.get("metadata") if isinstance(obj.get("metadata"), str) else None
        stem, options, _ = split_inline_options(question)
        closed = _closed(reader, line, stem, answer, options)
        if closed is None:
            continue
        reader.records.append(
            SlideQARecord(
                slide_id=slide, question=closed[0], answer=answer, options=closed[1], answer_label=closed[2],
                task=task, is_report=(task or "").casefold() in REPORT_TASKS, source=str(reader.path),
                line=line, index=index, slide_match=match, record_id=rid, image=image,  # type: ignore[arg-type]
            )
        )


def _read_slideinstruction(reader: _Reader) -> None:
    name = reader.path.name.casefold()
    task = "caption" if "caption" in name else "vqa" if "vqa" in name else None
    for line, index, obj in reader.rows():
        qa = _conversation_qa(reader, line, obj)
        if qa is None:
            continue
        image = obj.get("image")
        first = image[0] if isinstance(image, list) and image else image
        if not isinstance(first, str) or not first.strip():
            reader.skip(line, "no 'image' feature file to name the slide")
            continue
        ref = Path(first.strip())
        tumor = ref.parent.name or None
        stem, options, _ = split_inline_options(qa[0])
        closed = _closed(reader, line, stem, qa[1], options)
        if closed is None:
            continue
        reader.records.append(
            SlideQARecord(
                slide_id=ref.stem, question=closed[0], answer=qa[1], options=closed[1], answer_label=closed[2],
                task=task, is_report=task == "caption", source=str(reader.path), line=line, index=index,
                slide_match="barcode", record_id=str(obj["id"]) if obj.get("id") is not None else None,
                image=first, tumor=tumor if tumor not in (".", "") else None,
            )
        )


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip().casefold() in ("", "nan")


def _read_slidebench(reader: _Reader) -> None:
    if reader.path.suffix.lower() not in (".csv", ".tsv"):
        _read_tc_ssa(reader)
        return
    caption = "caption" in reader.path.name.casefold()
    with reader.path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.DictReader(f, delimiter="\t" if reader.path.suffix.lower() == ".tsv" else ",")
        fields = set(rows.fieldnames or [])
        bcnb = "Tumor" not in fields
        if not {"Slide", "Question", "Answer"} <= fields:
            reader.skip(1, f"not a SlideBench CSV: columns {sorted(fields)} lack Slide, Question or Answer")
            return
        for index, row in enumerate(rows):
            line = rows.line_num  # the file line where the row ends (quoted fields may span lines)
            slide, question = (row.get("Slide") or "").strip(), normalize_text(strip_image_token(row.get("Question") or ""))
            answer = (row.get("Answer") or "").strip()
            if not slide or not question or not answer:
                reader.skip(line, f"empty {'Slide' if not slide else 'Question' if not question else 'Answer'}")
                continue
            letters = [k for k in LETTERS if k in fields]
            values = [row.get(k) for k in letters]
            # drop empty trailing options (C/D NaN); an empty one before a filled one is malformed
            while values and _empty(values[-1]):
                values.pop()
            if any(_empty(v) for v in values):
                reader.skip(line, "an empty option before a filled one")
                continue
            options = [normalize_text(str(v)) for v in values] or None
            closed = _closed(reader, line, question, answer, options)
            if closed is None:
                continue
            if bcnb:
                task = (row.get("Task") or "").strip() or None
            else:
                broad, narrow = (row.get("Broad Category") or "").strip(), (row.get("Narrow Category") or "").strip()
                task = f"{broad} - {narrow}" if broad and narrow else broad or narrow or None
            meta = {"output": row["Output"]} if row.get("Output") else {}
            reader.records.append(
                SlideQARecord(
                    slide_id=slide, question=question, answer=answer, options=closed[1], answer_label=closed[2],
                    task=task, is_report=caption, source=str(reader.path), line=line, index=index,
                    slide_match="patient" if bcnb else "barcode", record_id=(row.get("ID") or "").strip() or None,
                    image=f"{slide}.csv" if bcnb else f"TCGA_patch_feat/{row.get('Tumor', '').strip()}/{slide}.csv",
                    tumor=None if bcnb else (row.get("Tumor") or "").strip() or None, meta=meta,
                )
            )


def _read_tc_ssa(reader: _Reader) -> None:
    """TC-SSA's ``slidebench_test.json``: ``slide_id, question, choices ("A) x"), answer, category``."""
    for line, index, obj in reader.rows():
        slide = str(obj.get("slide_id") or "").strip()
        question = normalize_text(strip_image_token(str(obj.get("question") or "")))
        answer = str(obj.get("answer") or "").strip()
        if not slide or not question or not answer:
            reader.skip(line, f"missing {'slide_id' if not slide else 'question' if not question else 'answer'}")
            continue
        choices = obj.get("choices")
        options = None
        if isinstance(choices, list) and choices:
            options = [re.sub(r"^\s*[A-D][).]\s*", "", normalize_text(str(c))) for c in choices if not _empty(c)]
        closed = _closed(reader, line, question, answer, options)
        if closed is None:
            continue
        reader.records.append(
            SlideQARecord(
                slide_id=slide, question=question, answer=answer, options=closed[1], answer_label=closed[2],
                task=obj.get("category"), source=str(reader.path), line=line, index=index,
                slide_match="barcode" if slide.upper().startswith("TCGA-") else "patient",
            )
        )


def _read_wsi_vqa(reader: _Reader) -> None:
    for line, index, obj in reader.rows():
        case = str(obj.get("Id") or "").strip()
        question = normalize_text(str(obj.get("Question") or ""))
        answer = str(obj.get("Answer") if obj.get("Answer") is not None else "").strip()
        if not case or not question or not answer:
            reader.skip(line, f"missing {'Id' if not case else 'Question' if not question else 'Answer'}")
            continue
        choice = obj.get("Choice")
        options = None
        if isinstance(choice, list) and choice:
            options = [normalize_text(str(c)) for c in choice]
            if len(options) > len(LETTERS):
                reader.skip(line, f"{len(options)} choices; at most {len(LETTERS)} are supported")
                continue
        label = None
        if options is not None:
            # the answer is the option text (§3.5): match by key, never by a leading letter
            keys = [answer_key(o) for o in options]
            if answer_key(answer) not in keys:
                reader.skip(line, f"answer {answer[:40]!r} is none of the {len(options)} choices")
                continue
            label = LETTERS[keys.index(answer_key(answer))]
            if answer not in options:
                reader.note(line, f"answer {answer[:40]!r} matches choice {label} only after normalisation")
        else:
            _, _, label = _closed(reader, line, question, answer, None) or (None, None, None)
        reader.records.append(
            SlideQARecord(
                slide_id=case, question=question, answer=answer, options=options, answer_label=label,
                source=str(reader.path), line=line, index=index, slide_match="case", record_id=case,
            )
        )


def _read_pathmllm(reader: _Reader) -> None:
    names = set(SlideQARecord.__dataclass_fields__)
    for line, _index, obj in reader.rows():
        missing = [k for k in ("slide_id", "question", "answer") if not obj.get(k)]
        if missing:
            reader.skip(line, f"missing {', '.join(missing)}")
            continue
        unknown = set(obj) - names
        if unknown:
            reader.skip(line, f"unknown keys {sorted(unknown)}")
            continue
        reader.records.append(SlideQARecord(**obj))


def _note_duplicates(reader: _Reader) -> None:
    seen: dict[str, int] = {}
    for r in reader.records:
        if r.record_id is None or r.slide_match == "case":  # WSI-VQA Ids are case ids, repeated by design
            continue
        if r.record_id in seen:
            reader.note(r.line, f"duplicate id {r.record_id!r} (first at line {seen[r.record_id]}); keyed by (file, index)")
        else:
            seen[r.record_id] = r.line
