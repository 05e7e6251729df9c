"""Where index vectors come from: features files, vectors files, or images and texts to embed.

* ``features_<encoder>.h5`` of ``pathmllm slide features`` (and CLAM / TRIDENT files of the
  same layout): ``features (N, D)`` + ``coords (N, 2)`` -> metadata ``slide, x, y, source``
  (``patch_size_level0`` where the coords say so).
* the HDF5 of ``pathmllm embed-patches``: ``features (N, D)`` + ``paths (N,)`` -> ``path, source``.
* ``vectors.parquet`` (:mod:`pathmllm.index.vectors_file`) -> ``kind, image, text, ...``.
* ``.npy`` arrays ``(N, D)`` (queries only; no metadata, no model).
* images and texts, embedded by the universal embedder (:func:`embed_inputs`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class VectorBatch:
    """Vectors ``(N, D)`` float32 with one metadata row each, from one source."""

    vectors: np.ndarray
    metadata: pa.Table
    model: str | None
    source: str


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def slide_name_of(path: Path, features_attrs: dict[str, Any], coords_attrs: dict[str, Any]) -> str:
    """The slide a features file belongs to: its ``name`` attribute; else the store folder
    (``<slide>/<setting>/features_<enc>.h5``) or the file name (CLAM's and TRIDENT's ``<slide>.h5``)."""
    for attrs in (features_attrs, coords_attrs):
        if attrs.get("name"):
            return _text(attrs["name"])
    if path.name.startswith("features_") and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def load_features_h5(path: str | os.PathLike[str]) -> VectorBatch:
    """Vectors and metadata of a slide features file or an ``embed-patches`` file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        if "features" not in f:
            raise ValueError(f"{path}: no 'features' dataset; expected the output of `pathmllm slide features` "
                             "(or CLAM/TRIDENT) or of `pathmllm embed-patches`")
        feats = np.asarray(f["features"][:], dtype=np.float32)
        if feats.ndim == 3 and feats.shape[0] == 1:  # some CLAM files keep a leading batch axis
            feats = feats[0]
        if feats.ndim != 2:
            raise ValueError(f"{path}: 'features' has shape {feats.shape}; expected (N, D)")
        fattrs = dict(f["features"].attrs)
        model = _text(fattrs["encoder"]) if fattrs.get("encoder") else None
        source = str(path)
        if "coords" in f:
            coords = np.asarray(f["coords"][:])
            if coords.ndim == 3 and coords.shape[0] == 1:
                coords = coords[0]
            cattrs = dict(f["coords"].attrs)
            if coords.shape != (len(feats), 2):
                raise ValueError(f"{path}: coords {coords.shape} do not match features {feats.shape}")
            cols: dict[str, Any] = {
                "slide": pa.array([slide_name_of(path, fattrs, cattrs)] * len(feats), pa.string()),
                "x": pa.array(coords[:, 0].astype(np.int64)), "y": pa.array(coords[:, 1].astype(np.int64)),
            }
            if "patch_size_level0" in cattrs:
                cols["patch_size_level0"] = pa.array(np.full(len(feats), int(cattrs["patch_size_level0"])))
        elif "paths" in f:
            rel = [_text(p) for p in f["paths"][:]]
            if len(rel) != len(feats):
                raise ValueError(f"{path}: {len(rel)} paths for {len(feats)} feature rows")
            folder = _text(fattrs["folder"]) if fattrs.get("folder") else ""
            cols = {"path": pa.array([os.path.join(folder, p) if folder else p for p in rel], pa.string())}
        else:
            cols = {"row": pa.array(np.arange(len(feats), dtype=np.int64))}
        cols["source"] = pa.array([source] * len(feats), pa.string())
    return VectorBatch(feats, pa.table(cols), model, source)


def load_vectors_parquet(path: str | os.PathLike[str]) -> VectorBatch:
    from pathmllm.index.vectors_file import read_vectors_arrow

    vectors, records, model = read_vectors_arrow(path)
    return VectorBatch(vectors, records, model, str(path))


def load_any(path: str | os.PathLike[str]) -> VectorBatch:
    """A features ``.h5``, a ``vectors.parquet`` or a ``.npy`` array, by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return load_features_h5(path)
    if suffix == ".parquet":
        return load_vectors_parquet(path)
    if suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        arr = np.load(path, allow_pickle=False)
        arr = arr.reshape(1, -1) if arr.ndim == 1 else arr
        return VectorBatch(arr, pa.table({"source": [str(path)] * len(arr)}), None, str(path))
    raise ValueError(f"{path}: unknown vectors file type {suffix!r}; give a .h5 features file, "
                     "a vectors .parquet or a .npy array")


def expand_feature_paths(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; a folder becomes its ``features_*.h5`` files (all ``*.h5`` if it has none),
    searched recursively."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.rglob("features_*.h5")) or sorted(p.rglob("*.h5"))
            if not found:
                raise FileNotFoundError(f"{p}: no .h5 features files in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def expand_images(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files as given; a folder becomes its images (searched recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return out


def read_texts(path: str | os.PathLike[str]) -> list[str]:
    """One text per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file (one text per line)")
    texts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no texts (the file is empty)")
    return texts


def load_embedder_for(model: str, device: str = "auto") -> Any:
    """The universal embedder ``model`` (:func:`pathmllm.models.embedder.load_embedder`)."""
    try:
        from pathmllm.models.embedder import load_embedder
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("pathmllm"):
            raise ImportError("the universal embedder (pathmllm.models.embedder) is not part of this "
                              "installation; build and search with --features / --vectors files instead") from exc
        raise
    return load_embedder(model, device=device)


def embed_inputs(
    embedder: Any,
    images: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str] = (),
    pairs: bool = False,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Embed ``images`` and ``texts`` separately (or, with ``pairs``, each image with its text).

    Returns vectors ``(N, D)`` and records (``kind``, ``image``, ``text``) as a vectors file has
    them; ``progress(n)`` is called after each batch of ``n`` inputs.
    """
    if pairs and len(images) != len(texts):
        raise ValueError(f"{len(images)} images and {len(texts)} texts: pairs need one text per image")
    jobs: list[tuple[str, list[Any], list[Any]]] = []
    if pairs:
        jobs.append(("pair", list(images), list(texts)))
    else:
        jobs += [("image", list(images), [None] * len(images)), ("text", [None] * len(texts), list(texts))]
    parts: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    bs = max(1, batch_size)
    for kind, imgs, txts in jobs:
        for start in range(0, len(imgs), bs):
            im, tx = imgs[start:start + bs], txts[start:start + bs]
            if kind == "pair":
                vec = embedder.embed_pairs([str(p) for p in im], tx)
            elif kind == "image":
                vec = embedder.embed_images([str(p) for p in im])
            else:
                vec = embedder.embed_texts(tx)
            parts.append(np.asarray(vec, dtype=np.float32))
            records += [{"kind": kind, "image": None if i is None else str(i), "text": t} for i, t in zip(im, tx)]
            if progress is not None:
                progress(len(im))
    dim = int(getattr(embedder, "dim", parts[0].shape[1] if parts else 0))
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return vectors, records
