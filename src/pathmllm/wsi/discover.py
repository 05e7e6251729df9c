"""Find slides in the files and folders a user names."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pathmllm.wsi.backends.base import SLIDE_EXTENSIONS, slide_extension

log = logging.getLogger(__name__)

#: extensions a folder scan picks up (plain images only when asked: folders of PNG tiles are common)
WSI_EXTENSIONS = tuple(e for e in SLIDE_EXTENSIONS if e not in (".png", ".jpg", ".jpeg", ".bmp"))


@dataclass(frozen=True)
class Discovery:
    """Slides found, and the inputs that named nothing usable (each with a reason)."""

    slides: list[Path]
    problems: list[tuple[str, str]]


def _dicom_series_key(path: Path) -> str | None:
    try:
        import pydicom
    except ImportError:
        return None
    try:
        from pathmllm.wsi.backends.dicom import quiet_pydicom

        with quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            uid = ds.get("SeriesInstanceUID")
    except Exception as exc:  # not DICOM, or corrupt: let the reader report it
        log.debug("%s: no DICOM series (%s)", path, exc)
        return None
    return str(uid) if uid else None


def _collapse_dicom(files: list[Path]) -> list[Path]:
    """Keep one file per DICOM series per folder (the reader finds the series' other files)."""
    out: list[Path] = []
    seen: set[tuple[Path, str]] = set()
    for f in files:
        if f.suffix.lower() != ".dcm":
            out.append(f)
            continue
        key = _dicom_series_key(f)
        if key is None:
            out.append(f)
            continue
        if (f.parent, key) in seen:
            continue
        seen.add((f.parent, key))
        out.append(f)
    return out


def find_slides(
    inputs: list[str | os.PathLike[str]], recursive: bool = True, include_images: bool = False
) -> Discovery:
    """Expand files and folders into slide files, in a stable order, without duplicates.

    A named file is always taken (the reader decides if it is a slide); a folder is scanned
    for slide extensions; MRXS side folders are not descended into; DICOM files of one series
    count once. Inputs that do not exist or hold no slide are returned as problems.
    """
    exts = SLIDE_EXTENSIONS if include_images else WSI_EXTENSIONS
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            problems.append((str(p), "no such file or folder"))
            continue
        if p.is_file():
            found.append(p)
            continue
        walker = p.rglob("*") if recursive else p.glob("*")
        files = sorted(
            f for f in walker
            if f.is_file() and not f.name.startswith(".") and slide_extension(f) in exts
            and not _inside_mrxs_folder(f)
        )
        files = _collapse_dicom(files)
        if not files:
            problems.append(
                (str(p), f"no slides in this folder (looked for {', '.join(exts)})")
            )
        found.extend(files)
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return Discovery(unique, problems)


def _inside_mrxs_folder(path: Path) -> bool:
    parent = path.parent
    return (parent.parent / f"{parent.name}.mrxs").exists()
