"""Build and search an index from files, images and texts (what ``pathmllm index`` calls)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathmllm.index.sources import (
    VectorBatch,
    embed_inputs,
    expand_feature_paths,
    expand_images,
    load_any,
    load_embedder_for,
    load_features_h5,
    load_vectors_parquet,
    read_texts,
)
from pathmllm.index.vector_index import IndexParams, VectorIndex

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    folder: str
    created: bool
    added: int
    count: int
    dim: int
    kind: str
    metric: str
    model: str | None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_matches(index: VectorIndex, kind: str | None, metric: str | None) -> None:
    """``kind``/``metric``, when given, must be those of the existing ``index``."""
    for name, asked, has in (("kind", kind, index.kind), ("metric", metric, index.metric)):
        if asked is not None and asked != has:
            raise ValueError(f"{index.folder} is a {name}={has!r} index; cannot add with {name}={asked!r} "
                             f"(leave --{name} out to append, or choose a new folder)")


def build_index(
    folder: str | os.PathLike[str],
    *,
    features: Sequence[str | os.PathLike[str]] = (),
    vectors: Sequence[str | os.PathLike[str]] = (),
    images: Sequence[str | os.PathLike[str]] = (),
    texts: str | os.PathLike[str] | Sequence[str] | None = None,
    pairs: bool = False,
    model: str | None = None,
    kind: str | None = None,
    metric: str | None = None,
    params: IndexParams | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Create the index in ``folder`` (or append to the one there) from features files
    (files or folders), vectors files, and/or images and texts embedded by ``model``.

    ``texts``: a file with one text per line, or a list of texts. Each source is saved once
    added, so a failure later keeps what was added before.
    """
    folder = Path(folder)
    text_list = read_texts(texts) if isinstance(texts, (str, os.PathLike)) else list(texts or [])
    image_list = expand_images(images) if images else []
    feature_files = expand_feature_paths(features) if features else []
    vector_files = [Path(v) for v in vectors]
    for v in vector_files:
        if not v.is_file():
            raise FileNotFoundError(f"{v}: no such vectors file")
    if not (feature_files or vector_files or image_list or text_list):
        raise ValueError("nothing to index: give features files, vectors files, images or texts")

    index: VectorIndex | None = None
    if VectorIndex.is_index(folder):
        index = VectorIndex.open(folder)
        check_matches(index, kind, metric)
    created, added, sources = False, 0, []

    def add(batch: VectorBatch) -> None:
        nonlocal index, created, added
        if index is None:
            index = VectorIndex.create(folder, batch.vectors.shape[1], kind or "flat",  # type: ignore[arg-type]
                                       metric or "cosine", batch.model, params)
            created = True
        index.add(batch.vectors, batch.metadata, model=batch.model)
        index.save()
        added += len(batch.vectors)
        sources.append(batch.source)
        log.info("%s: added %d vectors (%d in the index)", batch.source, len(batch.vectors), len(index))

    for path in feature_files:
        add(load_features_h5(path))
    for path in vector_files:
        add(load_vectors_parquet(path))
    if image_list or text_list:
        model = model or (index.model if index is not None else None)
        if not model:
            raise ValueError("images and texts need a model to embed them: pass --model")
        embedder = load_embedder_for(model, device)
        vecs, records = embed_inputs(embedder, image_list, text_list, pairs, batch_size, progress)
        import pyarrow as pa

        what = " + ".join(f"{n} {name}" for n, name in ((len(image_list), "images"), (len(text_list), "texts")) if n)
        add(VectorBatch(vecs, pa.Table.from_pylist(records), getattr(embedder, "name", model), what))
    assert index is not None
    return BuildResult(str(folder), created, added, len(index), index.dim, index.kind, index.metric, index.model,
                       sources)


@dataclass
class SearchResult:
    hits: pd.DataFrame
    """One row per hit: ``query, rank, id, score`` and the index's metadata columns."""
    queries: list[dict[str, Any]]
    """What each query was: ``{"query": i, "kind": ..., "image": ..., "text": ...}``."""
    model: str | None


def search_index(
    folder: str | os.PathLike[str],
    *,
    texts: Sequence[str] = (),
    images: Sequence[str | os.PathLike[str]] = (),
    vector_file: str | os.PathLike[str] | None = None,
    k: int = 10,
    model: str | None = None,
    device: str = "auto",
    nprobe: int | None = None,
    ef_search: int | None = None,
    strict_model: bool = True,
) -> SearchResult:
    """Search the index in ``folder`` by texts, images, image+text pairs (same number of each)
    or the vectors of a file; ``model`` defaults to the one recorded in the index."""
    index = VectorIndex.open(folder)
    texts, images = list(texts), [Path(p) for p in images]
    if vector_file is not None and (texts or images):
        raise ValueError("give either a vector file or texts/images as queries, not both")
    if vector_file is not None:
        batch = load_any(vector_file)
        queries, query_model = batch.vectors, batch.model
        described = [{"query": i, "kind": "vector", "source": str(vector_file)} for i in range(len(queries))]
    elif texts or images:
        if texts and images and len(texts) != len(images):
            raise ValueError(f"{len(images)} images and {len(texts)} texts: an image+text query needs one "
                             "text per image")
        for p in images:
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such image")
        query_model = model or index.model
        if not query_model:
            raise ValueError(f"the index at {folder} records no model; pass --model to embed the queries")
        embedder = load_embedder_for(query_model, device)
        pairs = bool(texts and images)
        queries, records = embed_inputs(embedder, images, texts, pairs=pairs, batch_size=max(1, len(texts) + len(images)))
        query_model = getattr(embedder, "name", query_model)
        described = [{"query": i, **r} for i, r in enumerate(records)]
    else:
        raise ValueError("no query: give --text, --image (or both) or --vector-file")
    frame = index.search_frame(np.asarray(queries), k, model=query_model, strict_model=strict_model,
                               nprobe=nprobe, ef_search=ef_search)
    return SearchResult(frame, described, query_model)
