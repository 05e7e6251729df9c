"""Embed files of images, texts or image+text pairs into a ``vectors.parquet`` (``pathmllm embed``).

Inputs:
- images: files or folders (searched recursively for png/jpg/tif/bmp);
- texts: strings, or a text file with one text per line (blank lines are skipped);
- pairs: a JSONL or CSV manifest with ``image`` and ``text`` fields (relative image paths are
  relative to the manifest); other fields are kept as metadata columns.

Unreadable images are reported and skipped (never fatal): the rest are embedded and written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathmllm.models.embedder import ImageReadError, load_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given and every image under the given folders, sorted per folder."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError("no images given")
    return files


def read_text_lines(path: str | os.PathLike[str]) -> list[str]:
    """Non-blank lines of a UTF-8 text file."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise ValueError(f"{path}: no texts (the file is empty or blank)")
    return texts


def read_pairs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records with ``image`` (absolute path) and ``text`` from a JSONL or CSV manifest."""
    from pathmllm.data.records import read_records

    path = Path(path)
    rows = read_records(path, default=".jsonl")
    for n, row in enumerate(rows, 1):
        if not row.get("image") or not row.get("text"):
            raise ValueError(f"{path}: record {n} needs both 'image' and 'text' fields, got {sorted(row)}")
        image = Path(row["image"])
        row["image"] = str(image if image.is_absolute() else path.parent / image)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


def readable(images: Sequence[Path | str]) -> tuple[list[int], list[dict[str, str]]]:
    """Indices of images that open, and ``{path, error}`` for those that do not."""
    ok, bad = [], []
    for i, im in enumerate(images):
        try:
            load_image(im)
        except ImageReadError as exc:
            bad.append({"path": str(im), "error": str(exc)})
        else:
            ok.append(i)
    return ok, bad


def embed_to_file(
    kind: Literal["image", "text", "pair"],
    model: str,
    out: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] | None = None,
    texts: Sequence[str] | None = None,
    records: Sequence[dict[str, Any]] | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    embedder: Any = None,
) -> dict[str, Any]:
    """Embed and write ``out`` (vectors.parquet). Returns ``{n, dim, output, skipped}``."""
    from pathmllm.index.vectors_file import write_vectors
    from pathmllm.models.embedder import load_embedder

    emb = embedder or load_embedder(model, device=device, batch_size=batch_size)
    skipped: list[dict[str, str]] = []
    if kind == "text":
        texts = list(texts or [])
        vectors = emb.embed_texts(texts, progress=progress)
        rows = [{"kind": "text", "text": t} for t in texts]
    else:
        if kind == "image":
            rows = [{"kind": "image", "image": str(p)} for p in (images or [])]
        else:
            rows = [{**r, "kind": "pair"} for r in (records or [])]
        ok, skipped = readable([r["image"] for r in rows])
        for s in skipped:
            log.info("skipped %s", s["error"])
        rows = [rows[i] for i in ok]
        paths = [r["image"] for r in rows]
        if kind == "image":
            vectors = emb.embed_images(paths, progress=progress)
        else:
            vectors = emb.embed_pairs(paths, [r["text"] for r in rows], progress=progress)
    if not rows:
        raise ValueError("nothing to embed: every input was unreadable (see the messages above)")
    vectors = np.asarray(vectors, np.float32)
    write_vectors(out, vectors, rows, model=emb.name)
    return {"n": len(rows), "dim": int(vectors.shape[1]), "output": str(out), "skipped": skipped}
