"""Virtual slides: small pyramidal TIFFs mosaicked from labelled tiles, with known answers.

A virtual slide is a ``rows x cols`` grid of 256 px cells at ``mpp`` µm/px. Most cells hold a
tile of the slide's major class, a minority hold tiles of other classes, some are white
background. Each 224 px source tile (LC25000) is resized to 256 px. The label of every cell is
known, so slide-level questions ("What is the diagnosis?") and region-level evidence have
ground truth, for tests and for learning a slide model on real tissue texture.

The file is written as ``benchmarks/synthetic_slide.py`` writes its pyramids: tiled 256 px
JPEG (or zlib) pages, reduced levels at downsamples 4, 16, ... as NewSubfileType = reduced
image, resolution tags in pixels per centimetre, so OpenSlide opens it as ``generic-tiff`` and
reports ``openslide.mpp-x`` = ``mpp``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pathmllm.data.slide_qa import SlideQARecord, write_slide_qa_jsonl

CELL = 256
BACKGROUND = "background"
CLASS_NAMES = {
    "lung_aca": "lung adenocarcinoma",
    "lung_scc": "lung squamous cell carcinoma",
    "lung_n": "benign lung tissue",
    "colon_aca": "colon adenocarcinoma",
    "colon_n": "benign colonic tissue",
}
#: one word per class for the word-level text of the hierarchical contrastive loss
CLASS_WORDS = {"lung_aca": "adenocarcinoma", "lung_scc": "squamous", "lung_n": "benign",
               "colon_aca": "adenocarcinoma", "colon_n": "benign"}


@dataclass
class VirtualSlide:
    """What :func:`make_virtual_slide` wrote, and the answers it knows."""

    path: Path
    grid: tuple[int, int]
    """(rows, cols) of cells."""
    mpp: float
    major_class: str
    classes: list[str]
    """The classes offered as options, in order."""
    cell_labels: list[list[str]]
    """Label of each cell, ``[row][col]``: a class or ``"background"``."""
    cell_sources: list[list[str | None]]
    """Source tile of each cell (None for background)."""
    cell_size: int = CELL
    level_downsamples: tuple[int, ...] = (1,)
    report: str = ""
    questions: list[dict[str, object]] = field(default_factory=list)
    """``{"question", "options" (or None), "answer", "answer_label", "is_report", "task"}``."""

    @property
    def slide_id(self) -> str:
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.grid[1] * self.cell_size, self.grid[0] * self.cell_size

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Level-0 ``(x, y, width, height)`` of a cell."""
        return col * self.cell_size, row * self.cell_size, self.cell_size, self.cell_size

    def label_map(self) -> np.ndarray:
        """Cell labels as an array ``(rows, cols)`` of str."""
        return np.array(self.cell_labels, dtype=object)

    def class_counts(self) -> dict[str, int]:
        labels, counts = np.unique(self.label_map().astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, counts, strict=True)}

    def records(self) -> list[SlideQARecord]:
        """The slide's questions as records (``slide_match="stem"``)."""
        return [
            SlideQARecord(
                slide_id=self.slide_id,
                question=str(q["question"]),
                answer=str(q["answer"]),
                options=list(q["options"]) if q["options"] else None,  # type: ignore[call-overload]
                answer_label=q["answer_label"],  # type: ignore[arg-type]
                task=str(q["task"]),
                is_report=bool(q["is_report"]),
                source=str(self.path),
                index=i,
                image=self.path.name,
                meta={"captions": q["captions"]} if q.get("captions") else {},
            )
            for i, q in enumerate(self.questions)
        ]


def class_name(label: str) -> str:
    return CLASS_NAMES.get(label, label.replace("_", " "))


def _pyramid(width: int, height: int, tile: int) -> list[int]:
    out = [1]
    while max(width, height) / (out[-1] * 4) >= tile:
        out.append(out[-1] * 4)
    return out


def write_pyramid_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mpp: float,
    tile: int = CELL,
    compression: Literal["jpeg", "zlib"] = "jpeg",
    quality: int = 90,
) -> tuple[int, ...]:
    """Write ``image`` ``(height, width, 3)`` uint8 as an OpenSlide-readable pyramidal TIFF
    (atomically); returns the level downsamples."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    downsamples = _pyramid(w, h, tile)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    args = {"compression": "jpeg", "compressionargs": {"level": quality}} if compression == "jpeg" else {
        "compression": "zlib"}
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for i, ds in enumerate(downsamples):
                level = image if ds == 1 else np.asarray(
                    Image.fromarray(image).resize((math.ceil(w / ds), math.ceil(h / ds)), Image.Resampling.BOX)
                )
                res = 1e4 / (mpp * ds)  # px per cm
                tw.write(
                    level,
                    tile=(tile, tile),
                    photometric="rgb",
                    subfiletype=0 if i == 0 else 1,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    description=f"pathmllm virtual slide level {i}",
                    metadata=None,
                    **args,
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return tuple(downsamples)


def _fields(n: int) -> str:
    return f"{n} field" if n == 1 else f"{n} fields"


def _templated(major: str, classes: Sequence[str], counts: dict[str, int], n_cells: int) -> tuple[str, list[dict]]:
    tissue = n_cells - counts.get(BACKGROUND, 0)
    minor = sorted((c for c in counts if c not in (major, BACKGROUND)), key=lambda c: (-counts[c], c))
    report = (
        f"Diagnosis: {class_name(major)}. The tissue covers {tissue} of {n_cells} fields and is "
        f"predominantly {class_name(major)} ({_fields(counts.get(major, 0))})."
    )
    if minor:
        report += " Minor components: " + ", ".join(f"{class_name(c)} ({_fields(counts[c])})" for c in minor) + "."
    options = [class_name(c) for c in classes]
    letter = "ABCD"[list(classes).index(major)]
    questions = [
        {"question": "What is the diagnosis?", "options": options, "answer": letter, "answer_label": letter,
         "is_report": False, "task": "diagnosis"},
        {"question": "Write the pathology report for this slide.", "options": None, "answer": report,
         "answer_label": None, "is_report": True, "task": "report",
         "captions": {"word": CLASS_WORDS.get(major, class_name(major).split()[-1]), "phrase": class_name(major),
                      "sentence": f"Diagnosis: {class_name(major)}.", "paragraph": report}},
    ]
    return report, questions


def make_virtual_slide(
    out_path: str | os.PathLike[str],
    tiles: Sequence[str | os.PathLike[str]],
    labels: Sequence[str],
    major_class: str,
    rng: np.random.Generator,
    grid: tuple[int, int] = (6, 6),
    minority_fraction: float = 0.2,
    background_fraction: float = 0.2,
    mpp: float = 0.5,
    classes: Sequence[str] | None = None,
    compression: Literal["jpeg", "zlib"] = "jpeg",
) -> VirtualSlide:
    """Mosaic ``tiles`` (each with its label in ``labels``) into a pyramidal TIFF at ``out_path``.

    ``round(background_fraction * cells)`` cells are white, ``round(minority_fraction * cells)``
    hold tiles of classes other than ``major_class`` (none if there are no such tiles), and the
    rest hold ``major_class`` tiles, so the major class is the majority of tissue cells when
    ``minority_fraction < (1 - background_fraction) / 2``. ``classes`` (default: the sorted
    distinct labels) are the options of the diagnosis question.
    """
    if len(tiles) != len(labels):
        raise ValueError(f"{len(tiles)} tiles but {len(labels)} labels")
    rows, cols = grid
    n = rows * cols
    n_bg = round(background_fraction * n)
    n_minor = round(minority_fraction * n)
    if rows <= 0 or cols <= 0 or n_bg + n_minor >= n:
        raise ValueError(f"grid {grid} with {background_fraction=} and {minority_fraction=} leaves no major cells")
    major_tiles = [Path(t) for t, lab in zip(tiles, labels, strict=True) if lab == major_class]
    other = [(Path(t), lab) for t, lab in zip(tiles, labels, strict=True) if lab != major_class]
    if not major_tiles:
        raise ValueError(f"no tiles of the major class {major_class!r}; labels are {sorted(set(labels))}")
    if not other:
        n_minor = 0
    kinds = np.array(["bg"] * n_bg + ["minor"] * n_minor + ["major"] * (n - n_bg - n_minor))[rng.permutation(n)]
    image = np.full((rows * CELL, cols * CELL, 3), 255, np.uint8)
    cell_labels: list[list[str]] = [[BACKGROUND] * cols for _ in range(rows)]
    cell_sources: list[list[str | None]] = [[None] * cols for _ in range(rows)]
    for k, kind in enumerate(kinds):
        r, c = divmod(k, cols)
        if kind == "bg":
            continue
        if kind == "major":
            src, lab = major_tiles[int(rng.integers(len(major_tiles)))], major_class
        else:
            src, lab = other[int(rng.integers(len(other)))]
        tile = Image.open(src).convert("RGB")
        if tile.size != (CELL, CELL):
            tile = tile.resize((CELL, CELL), Image.Resampling.BICUBIC)
        image[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = np.asarray(tile)
        cell_labels[r][c], cell_sources[r][c] = lab, str(src)
    out_path = Path(out_path)
    downsamples = write_pyramid_tiff(out_path, image, mpp, compression=compression)
    classes = list(classes) if classes is not None else sorted(set(labels))
    if major_class not in classes:
        raise ValueError(f"major class {major_class!r} is not among the option classes {classes}")
    flat = [lab for row in cell_labels for lab in row]
    counts = {lab: flat.count(lab) for lab in set(flat)}
    report, questions = _templated(major_class, classes, counts, n)
    return VirtualSlide(
        path=out_path, grid=(rows, cols), mpp=mpp, major_class=major_class, classes=classes,
        cell_labels=cell_labels, cell_sources=cell_sources, level_downsamples=downsamples,
        report=report, questions=questions,
    )


@dataclass
class VirtualCohort:
    """What :func:`make_virtual_cohort` wrote."""

    slides: list[VirtualSlide]
    qa_path: Path
    """Normalised slide-QA JSONL (:func:`pathmllm.data.slide_qa.write_slide_qa_jsonl`)."""
    labels_path: Path
    """``cells.csv``: ``slide_id,row,col,x,y,width,height,label,source`` per cell."""


def read_tile_groups(tiles_root: str | os.PathLike[str]) -> list[tuple[Path, str, str]]:
    """``(path, label, group)`` per row of ``<tiles_root>/groups.csv`` (``path,label,group``)."""
    root = Path(tiles_root)
    table = root / "groups.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: no such file; expected a tile folder with groups.csv (path,label,group)")
    with table.open(newline="", encoding="utf-8") as f:
        return [(root / row["path"], row["label"], row["group"]) for row in csv.DictReader(f)]


def make_virtual_cohort(
    tiles_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_slides: int,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    grid: tuple[int, int] = (6, 6),
    minority_fraction: float = 0.2,
    background_fraction: float = 0.2,
    mpp: float = 0.5,
    prefix: str = "virtual",
) -> VirtualCohort:
    """Write ``n_slides`` virtual slides to ``<out_dir>/slides/<prefix>-NNN.tiff`` and their
    questions to ``<out_dir>/qa.jsonl``, cell labels to ``<out_dir>/cells.csv``.

    Only tiles whose group is in ``groups`` are used (None: all), so train and test cohorts
    can be built from disjoint groups. Major classes cycle over the classes present.
    """
    rows = read_tile_groups(tiles_root)
    classes = sorted({label for _, label, _ in rows})
    if groups is not None:
        wanted = set(groups)
        rows = [r for r in rows if r[2] in wanted]
    if not rows:
        raise ValueError(f"no tiles under {tiles_root} in groups {groups}")
    tiles, labels = [r[0] for r in rows], [r[1] for r in rows]
    present = sorted(set(labels))
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    slides = []
    for i in range(n_slides):
        major = present[i % len(present)]
        slides.append(
            make_virtual_slide(
                out / "slides" / f"{prefix}-{i:03d}.tiff", tiles, labels, major, rng, grid=grid,
                minority_fraction=minority_fraction, background_fraction=background_fraction, mpp=mpp,
                classes=classes,
            )
        )
    qa = write_slide_qa_jsonl([r for s in slides for r in s.records()], out / "qa.jsonl")
    cells = out / "cells.csv"
    with cells.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "row", "col", "x", "y", "width", "height", "label", "source"])
        for s in slides:
            for r in range(s.grid[0]):
                for c in range(s.grid[1]):
                    w.writerow([s.slide_id, r, c, *s.cell_box(r, c), s.cell_labels[r][c], s.cell_sources[r][c] or ""])
    return VirtualCohort(slides=slides, qa_path=qa, labels_path=cells)
