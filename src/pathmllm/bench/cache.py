"""Embeddings cached on disk, keyed by model, dataset and preprocessing; a rerun reuses them.

:class:`CachedEmbedder` offers the embedder protocol (``embed_images``, ``embed_texts``,
``embed_pairs``) over any embedder and stores each call's vectors under::

    <cache>/<model>/<dataset>/<kind>-<key>/meta.json, 000000.npy, 000001.npy, ...

``key`` hashes the model's fingerprint (name, class, vector size, prompt templates, image
preprocessing, and the checkpoint files' sizes and times), the kind (image, text, pair) and the
inputs (image paths with each file's size and time, texts). Vectors are written in shards of
``chunk`` inputs as they are computed, so an interrupted run resumes at its last finished shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import ImageRef, fingerprint_refs, read_images
from pathmllm.utils.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

#: ``progress(description, total)`` -> context manager yielding ``advance(n)``
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


class EmbeddingDimensionError(ValueError):
    """A model whose image and text vectors do not live in one space (different sizes)."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-80:] or "model"


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def model_fingerprint(embedder: Any) -> dict[str, Any]:
    """What decides an embedder's vectors, as JSON: its name, class, size, prompts and image
    preprocessing, and the checkpoint files' sizes and times when its name is a local folder."""
    fp: dict[str, Any] = {"name": str(embedder.name), "class": type(embedder).__name__, "dim": int(embedder.dim)}
    if hasattr(embedder, "fingerprint"):
        fp.update(_jsonable(embedder.fingerprint()))
    templates = getattr(embedder, "templates", None)
    if templates is not None:
        fp["templates"] = _jsonable(templates)
    encoder = getattr(embedder, "encoder", None)
    spec = getattr(encoder, "spec", None)
    if spec is not None:
        fp["preprocessing"] = {k: _jsonable(getattr(spec, k)) for k in ("input_size", "mean", "std", "interpolation")}
    backbone = getattr(embedder, "backbone", None)
    image_processor = getattr(getattr(backbone, "processor", None), "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        keep = ("size", "min_pixels", "max_pixels", "patch_size", "merge_size", "image_mean", "image_std",
                "resample", "do_resize", "crop_size", "shortest_edge")
        fp["preprocessing"] = {k: _jsonable(v) for k, v in image_processor.to_dict().items() if k in keep}
    folder = Path(str(embedder.name)).expanduser()
    if folder.is_dir():
        fp["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
                       if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".pt", ".pth")}
    return fp


def file_identity(path: str | Path) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file, or of the newest file in a folder (for cache keys)."""
    p = Path(path).expanduser()
    files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    stats = [f.stat() for f in files if f.exists()]
    return [str(p.resolve()), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    for shard, start in enumerate(range(0, n, size)):
        yield shard, start, min(n, start + size)


class CachedEmbedder:
    """The embedder protocol over ``embedder``, with every call's vectors cached on disk.

    Args:
        embedder: any object with ``embed_images`` / ``embed_texts`` / ``embed_pairs``, ``dim``, ``name``.
        cache_dir: the cache root; ``None`` computes without caching.
        dataset: the dataset key (a folder name in the cache; part of the key).
        batch_size: passed to the embedder.
        progress: progress-bar factory for the inputs that must be computed.
        chunk: inputs per shard (a finished shard survives an interrupted run).
        key_extra: more facts that decide the vectors (e.g. the weights file's size and time).
    """

    def __init__(self, embedder: Any, cache_dir: str | Path | None, dataset: str, *, batch_size: int | None = None,
                 progress: ProgressFactory | None = None, chunk: int = 512,
                 key_extra: dict[str, Any] | None = None) -> None:
        self.embedder = embedder
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.dataset = dataset
        self.batch_size = batch_size
        self.progress = progress
        self.chunk = chunk
        self.fingerprint = model_fingerprint(embedder) | ({"extra": _jsonable(key_extra)} if key_extra else {})
        self.stats = {"computed": 0, "reused": 0}

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    @property
    def name(self) -> str:
        return str(self.embedder.name)

    def embed_images(self, images: Sequence[ImageRef], **_: Any) -> np.ndarray:
        """``N`` image references -> ``(N, dim)`` unit vectors."""
        refs = list(images)
        return self._cached("image", len(refs), fingerprint_refs(refs),
                            lambda a, b, **kw: self.embedder.embed_images(read_images(refs[a:b]), **kw))

    def embed_texts(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        texts = list(texts)
        return self._cached("text", len(texts), _hash_texts(texts),
                            lambda a, b, **kw: self.embedder.embed_texts(texts[a:b], **kw))

    def embed_pairs(self, images: Sequence[ImageRef], texts: Sequence[str], **_: Any) -> np.ndarray:
        refs, texts = list(images), list(texts)
        if len(refs) != len(texts):
            raise ValueError(f"embed_pairs needs as many texts as images: {len(refs)} images, {len(texts)} texts")
        key = fingerprint_refs(refs) + _hash_texts(texts)
        return self._cached("pair", len(refs), key,
                            lambda a, b, **kw: self.embedder.embed_pairs(read_images(refs[a:b]), texts[a:b], **kw))

    # ---- internals ----------------------------------------------------------------------
    def _entry(self, kind: str, n: int, items_key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps({"model": self.fingerprint, "kind": kind, "n": n, "items": items_key},
                                        sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / slug(self.name) / slug(self.dataset) / f"{kind}-{key}"

    def _cached(self, kind: str, n: int, items_key: str, compute: Callable[..., np.ndarray]) -> np.ndarray:
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        entry = self._entry(kind, n, items_key)
        shards = list(_chunks(n, self.chunk))
        done: dict[int, np.ndarray] = {}
        if entry is not None:
            for shard, a, b in shards:
                f = entry / f"{shard:06d}.npy"
                if f.is_file():
                    arr = np.load(f)
                    if arr.shape == (b - a, self.dim):
                        done[shard] = arr
        todo = [(s, a, b) for s, a, b in shards if s not in done]
        self.stats["reused"] += sum(b - a for s, a, b in shards if s in done)
        if todo:
            total = sum(b - a for _, a, b in todo)
            cm = self.progress(f"{self.dataset}: {kind}s", total) if self.progress else nullcontext(None)
            with cm as advance:
                for shard, a, b in todo:
                    kwargs: dict[str, Any] = {"progress": advance} if advance is not None else {}
                    if self.batch_size:
                        kwargs["batch_size"] = self.batch_size
                    vecs = np.asarray(compute(a, b, **kwargs), dtype=np.float32)
                    if vecs.shape != (b - a, self.dim):
                        raise EmbeddingDimensionError(
                            f"{self.name}: its {kind} vectors are {vecs.shape[-1]}-d but the model says dim="
                            f"{self.dim}; image and text vectors must share one size to be compared")
                    done[shard] = vecs
                    self.stats["computed"] += b - a
                    if entry is not None:
                        if not (entry / "meta.json").is_file():
                            entry.mkdir(parents=True, exist_ok=True)
                            write_text(entry / "meta.json", json.dumps(
                                {"model": self.fingerprint, "dataset": self.dataset, "kind": kind, "n": n,
                                 "chunk": self.chunk, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
                        with atomic_path(entry / f"{shard:06d}.npy") as tmp, tmp.open("wb") as fh:
                            np.save(fh, vecs)
        else:
            log.info("%s: %d %s vectors of %s reused from %s", self.dataset, n, kind, self.name, entry)
        return np.concatenate([done[s] for s, _, _ in shards])


def _hash_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()
