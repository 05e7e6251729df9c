"""ARCH (books and PubMed sets): images with captions, for cross-modal retrieval.

The public download unpacks to ``books_set/`` and ``pubmed_set/``, each with ``captions.json``
(a mapping of row number to ``{"caption", "uuid", ...}``; the books set adds ``figure_id`` and
``letter``) and ``images/<uuid>.<png|jpg>``. Several rows share a caption when one figure has
several panels, so a caption is one gallery item with several matching images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathmllm.bench.datasets.base import (
    IMAGE_SUFFIXES,
    CaptionSet,
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    register_dataset,
    report_missing,
)

#: captions.json rows of the public books_set whose image is not in the archive
ARCH_BOOKS_KNOWN_MISSING = 35


def caption_set(name: str, pairs: list[tuple[ImageRef, str]]) -> CaptionSet:
    """Unique images and unique captions from (image, caption) pairs, linked both ways."""
    text_index: dict[str, int] = {}
    image_index: dict[str, int] = {}
    images: list[ImageRef] = []
    positives: list[list[int]] = []
    for image, caption in pairs:
        caption = " ".join(caption.split())
        if not caption:
            continue
        t = text_index.setdefault(caption, len(text_index))
        key = str(image)
        if key not in image_index:
            image_index[key] = len(images)
            images.append(image)
            positives.append([])
        if t not in positives[image_index[key]]:
            positives[image_index[key]].append(t)
    return CaptionSet(name, images, list(text_index), positives)


def _arch_loader(subset: str, allowed_missing: int) -> Any:
    def load(root: Path, split: str | None = None) -> CaptionSet:
        name = f"arch-{subset}"
        folder = root if (root / "captions.json").is_file() else root / f"{subset}_set"
        table = folder / "captions.json"
        if not table.is_file():
            raise DatasetLayoutError(f"{name}: expected {subset}_set/captions.json in {root}")
        images_dir = folder / "images"
        if not images_dir.is_dir():
            raise DatasetLayoutError(f"{name}: expected the folder {images_dir} beside captions.json")
        try:
            rows = json.loads(table.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetLayoutError(f"{name}: {table} is not valid JSON ({exc})") from None
        items = list(rows.values()) if isinstance(rows, dict) else rows
        if not items or not all(isinstance(r, dict) and "uuid" in r and "caption" in r for r in items):
            raise DatasetLayoutError(f"{name}: {table} must map row numbers to objects with 'uuid' and 'caption'")
        files = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        pairs: list[tuple[ImageRef, str]] = []
        missing = []
        for r in items:
            p = files.get(str(r["uuid"]))
            if p is None:
                missing.append(str(r["uuid"]))
                continue
            pairs.append((str(p), str(r["caption"])))
        report_missing(name, missing, len(items), images_dir, "captions", allowed=allowed_missing)
        return caption_set(name, pairs)

    return load


for _subset, _allowed, _n in (("books", ARCH_BOOKS_KNOWN_MISSING, "4270 images, 3210 unique captions"),
                              ("pubmed", 0, "3309 images, 3285 unique captions")):
    register_dataset(DatasetInfo(
        f"arch-{_subset}", "captions", _arch_loader(_subset, _allowed), folders=("ARCH", "arch"),
        url="https://warwick.ac.uk/fac/cross_fac/tia/data/arch",
        layout=f"{_subset}_set/captions.json ({{row: {{caption, uuid, ...}}}}) + {_subset}_set/images/<uuid>.png|jpg",
        reference="Gamper & Rajpoot 2021, CVPR (multiple instance captioning)", licence="CC-BY-NC-SA-4.0",
        description=f"ARCH {_subset} set: {_n}"))
