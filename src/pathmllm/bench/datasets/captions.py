"""ARCH (books and PubMed sets): images with captions, for cross-modal retrieval.

The public zips unpack to ``books_set/`` and ``pubmed_set/`` (plus ``__MACOSX/`` junk), each with
``README.md``, ``captions.json`` and ``images/``. ``captions.json`` is a JSON *object* keyed by
row-index strings (pandas ``to_json(orient="index")``). Books rows are ``{figure_id, letter,
caption, uuid}`` with ``images/<uuid>.png``; 35 of its 4,305 rows have no image. A *bag* is the
rows sharing a ``figure_id``: every image of a bag matches the bag's caption. PubMed rows are
``{caption, uuid}`` with ``images/<uuid>.jpg`` or ``.png``; its 3,309 rows carry 3,285 distinct
captions, so the ground truth is keyed by uuid: every row is its own image query.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pathmllm.bench.datasets.base import (
    CaptionSet,
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    files_by_stem,
    find_dir,
    note,
    register_dataset,
    report_missing,
    require_images,
)

log = logging.getLogger(__name__)

#: captions.json rows of the public books_set whose image is not in the archive
ARCH_BOOKS_KNOWN_MISSING = 35
_ARCH_KEYS = {"books": ("figure_id", "letter", "caption", "uuid"), "pubmed": ("caption", "uuid")}


def caption_set(name: str, pairs: list[tuple[ImageRef, str]], notes: list[str] | None = None) -> CaptionSet:
    """Unique images and unique captions from (image, caption) pairs, linked both ways. Captions
    are stripped (ARCH's mostly start with a space) and runs of whitespace collapsed; an identical
    caption text is one gallery item matching all its images."""
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
    return CaptionSet(name, images, list(text_index), positives, notes=list(notes or []))


def _arch_loader(subset: str) -> Any:
    def load(root: Path, split: str | None = None) -> CaptionSet:
        name = f"arch-{subset}"
        folder = find_dir(root, lambda d: d.name == f"{subset}_set" and (d / "captions.json").is_file()) or \
            find_dir(root, lambda d: (d / "captions.json").is_file() and (d / "images").is_dir(), max_depth=0)
        if folder is None:
            raise DatasetLayoutError(f"{name}: expected {subset}_set/captions.json in {root}")
        table, images_dir = folder / "captions.json", folder / "images"
        if not images_dir.is_dir():
            raise DatasetLayoutError(f"{name}: expected the folder {images_dir} beside captions.json")
        try:
            data = json.loads(table.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetLayoutError(f"{name}: {table} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise DatasetLayoutError(f"{name}: {table} must be a JSON object keyed by row index ('0', '1', ...: "
                                     f"pandas orient='index'); got {type(data).__name__}")
        keys = _ARCH_KEYS[subset]
        notes: list[str] = []
        rows, malformed = [], []
        for k, r in data.items():
            if isinstance(r, dict) and all(c in r for c in keys) and str(r["uuid"]).strip():
                rows.append(r)
            else:
                malformed.append(str(k))
        if malformed:
            note(name, notes, f"{len(malformed)} row(s) of {table.name} lack {', '.join(keys)}; skipped: "
                              f"{', '.join(malformed[:5])}")
        files = files_by_stem(images_dir)  # the uuid, with either extension
        bags: dict[str, list[dict[str, Any]]] = {}
        for r in rows:  # books: a bag is the rows sharing a figure_id; PubMed: one row each
            bags.setdefault(str(r["figure_id"]) if subset == "books" else f"uuid:{r['uuid']}", []).append(r)
        pairs: list[tuple[ImageRef, str]] = []
        missing = []
        for bag in bags.values():
            captions = list(dict.fromkeys(str(r["caption"]).strip() for r in bag))
            for r in bag:
                p = files.get(str(r["uuid"]).strip())
                if p is None:
                    missing.append(str(r["uuid"]))
                    continue
                pairs += [(str(p), c) for c in captions]
        report_missing(name, missing, len(rows), images_dir, "rows", notes,
                       expected=ARCH_BOOKS_KNOWN_MISSING if subset == "books" else None)
        require_images(name, pairs, images_dir, f"rows of {table.name}")
        return caption_set(name, pairs, notes)

    return load


for _subset, _n in (("books", "4,305 rows, 4,270 images; bags by figure_id"),
                    ("pubmed", "3,309 images (3,272 jpg, 37 png), 3,285 distinct captions")):
    register_dataset(DatasetInfo(
        f"arch-{_subset}", "captions", _arch_loader(_subset), folders=("ARCH", "arch"),
        url="https://warwick.ac.uk/fac/cross_fac/tia/data/arch",
        layout=f"{_subset}_set/captions.json ({{\"0\": {{{', '.join(_ARCH_KEYS[_subset])}}}, ...}}) + "
               f"{_subset}_set/images/<uuid>.{'png' if _subset == 'books' else 'jpg|png'} (__MACOSX/ ignored)",
        reference="Gamper & Rajpoot 2021, CVPR (multiple instance captioning)", licence="CC-BY-NC-SA-4.0",
        description=f"ARCH {_subset} set: {_n}"))
