"""An embedded vector index: FAISS for the vectors, Parquet for what each vector stands for.

One folder holds one index::

    manifest.json               dim, kind, metric, model, count, parameters, file names
    index-000003.faiss          the FAISS index (faiss.write_index), ids = row positions
    metadata-000003.parquet     one row per vector: source path, slide, x, y, text, ...

Each :meth:`VectorIndex.save` writes a new generation of both data files (temp file, then
rename), then the manifest (atomically) that points at them, then removes the previous
generation: a reader or a killed run never sees a vector without its metadata row.

Kinds (``kind``): ``flat`` exact search (FAISS ``IndexFlat``); ``hnsw`` graph ANN
(``IndexHNSWFlat``; no training, fast queries, slower adds); ``ivf`` inverted lists
(``IndexIVFFlat``, trained by k-means on the first batch added). Metrics: ``cosine``
(vectors L2-normalised on add and on query, inner product; score = cosine similarity),
``ip`` (inner product as given), ``l2`` (score = squared Euclidean distance, lower is closer).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pathmllm.index import errors
from pathmllm.index.metadata import RESERVED_COLUMNS, append_rows, empty_rows, to_table
from pathmllm.utils.atomic import atomic_path, clean_stale_temps, write_json

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

Kind = Literal["flat", "hnsw", "ivf"]
Metric = Literal["cosine", "ip", "l2"]
KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")
FORMAT = "pathmllm-vector-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class IndexParams:
    """Parameters of the approximate kinds (ignored by ``flat``)."""

    hnsw_m: int = 32
    """HNSW: graph neighbours per node (memory ``4 * 2 * M`` bytes per vector; more = better recall)."""
    ef_construction: int = 40
    """HNSW: candidate list while adding (FAISS's default; more = better graph, slower adds)."""
    ef_search: int = 128
    """HNSW: candidate list while searching (default; at least ``k``)."""
    nlist: int | None = None
    """IVF: number of k-means cells; default ``4 * sqrt(n)`` of the first batch added."""
    nprobe: int = 16
    """IVF: cells visited per query (default; more = better recall, slower)."""


@dataclass
class Hit:
    """One search result: the ``rank``-th nearest vector (row ``id``) to query ``query``."""

    query: int
    rank: int
    id: int
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _faiss() -> Any:
    from pathmllm.utils.optional import require

    return require("faiss", "the vector index")


class VectorIndex:
    """Vectors ``(N, dim)`` float32 with one metadata row each, in one folder."""

    def __init__(self, folder: Path, dim: int, kind: str, metric: str, model: str | None,
                 params: IndexParams, faiss_index: Any, metadata: pa.Table, generation: int = 0) -> None:
        self.folder, self.dim, self.kind, self.metric, self.model = folder, dim, kind, metric, model
        self.params, self._index, self._metadata, self._generation = params, faiss_index, metadata, generation
        self._dirty = False

    # ---- create / open -------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], dim: int, kind: Kind = "flat", metric: Metric = "cosine",
               model: str | None = None, params: IndexParams | None = None) -> VectorIndex:
        """A new empty index in ``folder`` (created; must be empty or absent), saved at once."""
        folder = Path(folder)
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if cls.is_index(folder):
            raise FileExistsError(f"{folder} already holds an index; open it with VectorIndex.open to add to it")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(f"{folder} exists and is not an empty folder; choose a new folder for the index")
        folder.mkdir(parents=True, exist_ok=True)
        params = params or IndexParams()
        faiss_index = None if kind == "ivf" else _new_faiss_index(int(dim), kind, metric, params, None)
        index = cls(folder, int(dim), kind, metric, model, params, faiss_index, empty_rows(0))
        index._dirty = True
        index.save()
        return index

    @staticmethod
    def is_index(folder: str | os.PathLike[str]) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> VectorIndex:
        """Reopen an index saved in ``folder`` (nothing is rebuilt)."""
        import json

        import pyarrow.parquet as pq

        folder = Path(folder)
        if not cls.is_index(folder):
            what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
            raise errors.NotAnIndexError(
                f"{folder} is not a pathmllm vector index ({what}); build one with "
                f"`pathmllm index build {folder} --features ... | --vectors ... | --images ...`"
            )
        try:
            man = json.loads((folder / MANIFEST).read_text())
        except json.JSONDecodeError as exc:
            raise errors.NotAnIndexError(f"{folder / MANIFEST} is not valid JSON ({exc})") from exc
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise errors.NotAnIndexError(f"{folder / MANIFEST} is not the manifest of a pathmllm vector index")
        if int(man.get("format_version", 0)) > FORMAT_VERSION:
            raise errors.NotAnIndexError(
                f"{folder} was written by a newer pathmllm (index format {man['format_version']}); upgrade pathmllm")
        try:
            files, count, dim = man.get("files", {}), int(man["count"]), int(man["dim"])
            kind, metric, params = man["kind"], man["metric"], IndexParams(**man.get("params", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.CorruptIndexError(f"{folder / MANIFEST}: incomplete manifest ({exc!r})") from exc
        for name in filter(None, files.values()):
            if not (folder / name).is_file():
                raise errors.CorruptIndexError(f"{folder}: {name}, named by the manifest, is missing")
        faiss_index = None
        if files.get("index"):
            faiss_index = _faiss().read_index(str(folder / files["index"]))
            if faiss_index.ntotal != count:
                raise errors.CorruptIndexError(
                    f"{folder}: the FAISS file holds {faiss_index.ntotal} vectors, the manifest says {count}")
        elif kind != "ivf":
            raise errors.CorruptIndexError(f"{folder}: the manifest names no FAISS file")
        metadata = pq.read_table(folder / files["metadata"]) if files.get("metadata") else empty_rows(count)
        if metadata.num_rows != count:
            raise errors.CorruptIndexError(
                f"{folder}: the metadata has {metadata.num_rows} rows, the manifest says {count} vectors")
        return cls(folder, dim, kind, metric, man.get("model"), params, faiss_index, metadata,
                   int(man.get("generation", 0)))

    # ---- facts ---------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def __repr__(self) -> str:
        return (f"VectorIndex({str(self.folder)!r}, n={len(self)}, dim={self.dim}, kind={self.kind!r}, "
                f"metric={self.metric!r}, model={self.model!r})")

    @property
    def metadata(self) -> pa.Table:
        """One row per vector (row ``i`` belongs to id ``i``)."""
        return self._metadata

    def metadata_frame(self) -> pd.DataFrame:
        return self._metadata.to_pandas()

    def manifest(self) -> dict[str, Any]:
        from pathmllm import __version__

        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dim": self.dim, "kind": self.kind,
            "metric": self.metric, "model": self.model, "count": len(self), "params": asdict(self.params),
            "generation": self._generation, "files": self._files(self._generation),
            "metadata_columns": self._metadata.column_names, "pathmllm_version": __version__,
            "faiss_version": getattr(_faiss(), "__version__", "?"),
        }

    # ---- add -----------------------------------------------------------------------
    def add(self, vectors: np.ndarray, metadata: Sequence[Mapping[str, Any]] | pd.DataFrame | pa.Table | None = None,
            model: str | None = None) -> range:
        """Append ``vectors`` ``(N, dim)`` and their metadata rows (one per vector; ``None``: none).

        Returns the ids given (row positions). Call :meth:`save` to write them to the folder.
        ``model``: the model that made the vectors; it must match the index's.
        """
        self._check_model(model, "add vectors made by", strict=True)
        x = self._prepare(vectors, "vectors to add")
        rows = empty_rows(len(x)) if metadata is None else to_table(metadata)
        if rows.num_rows != len(x):
            raise ValueError(f"{rows.num_rows} metadata rows for {len(x)} vectors; give one row per vector")
        clash = sorted(set(rows.column_names) & RESERVED_COLUMNS)
        if clash:
            raise ValueError(f"metadata columns {clash} clash with search result columns "
                             f"{sorted(RESERVED_COLUMNS)}; rename them")
        merged = append_rows(self._metadata, rows)  # checks column types before anything changes
        if not len(x):
            return range(len(self), len(self))
        if self._index is None:
            self._index = _new_faiss_index(self.dim, self.kind, self.metric, self.params, x)
        start = len(self)
        self._index.add(x)
        self._metadata = merged
        if self.model is None and model:
            self.model = model
        self._dirty = True
        return range(start, len(self))

    def reserve(self, n_total: int) -> None:
        """Pre-size the vector storage of a ``flat`` or ``hnsw`` index for ``n_total`` vectors, so
        that adding them in chunks never reallocates it (a reallocation briefly holds the old and
        the new copy: about twice the memory). A no-op for ``ivf``."""
        if self._index is None or self.kind == "ivf" or n_total <= len(self):
            return
        faiss = _faiss()
        flat = self._index if self.kind == "flat" else faiss.downcast_index(self._index.storage)
        codes, now = flat.codes, flat.codes.size()
        codes.resize(int(n_total) * flat.code_size)  # a std::vector keeps its capacity when shrunk
        codes.resize(now)

    def vectors(self, copy: bool = True) -> np.ndarray:
        """The stored vectors ``(N, dim)`` float32, in id order (normalised for cosine).

        ``copy=False`` (flat and hnsw): a view of the index's own memory, valid until the next add.
        """
        if not len(self):
            return np.zeros((0, self.dim), np.float32)
        faiss = _faiss()
        if self.kind == "ivf":
            self._index.make_direct_map()
            return self._index.reconstruct_n(0, len(self))
        flat = self._index if self.kind == "flat" else faiss.downcast_index(self._index.storage)
        view = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(len(self), self.dim)
        return view.copy() if copy else view

    # ---- search --------------------------------------------------------------------
    def search_ids(self, queries: np.ndarray, k: int = 10, *, model: str | None = None, strict_model: bool = True,
                   nprobe: int | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, both ``(Q, min(k, len))``, best first; id ``-1`` where an approximate
        kind found fewer than ``k`` neighbours."""
        if isinstance(k, bool) or int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not len(self):
            raise errors.EmptyIndexError(
                f"the index at {self.folder} is empty; add vectors first (`pathmllm index build {self.folder} ...`)")
        self._check_model(model, "search with vectors made by", strict=strict_model)
        q = self._prepare(queries, "query vectors")
        kk = min(int(k), len(self))
        if kk < k:
            log.info("k=%d but the index holds %d vectors; returning %d per query", k, len(self), kk)
        if self.kind == "flat" and self.metric != "l2" and len(q) == 1:
            # FAISS scans for a single query on one thread; a BLAS matrix-vector product over the
            # same memory uses every core (docs/benchmarks.md, bench_index.py)
            scores = self.vectors(copy=False) @ q[0]
            top = np.argpartition(-scores, kk - 1)[:kk] if kk < len(scores) else np.arange(len(scores))
            order = top[np.argsort(-scores[top], kind="stable")]
            return scores[order][None], order[None].astype(np.int64)
        faiss = _faiss()
        search_params = None
        if self.kind == "hnsw":
            search_params = faiss.SearchParametersHNSW(efSearch=max(ef_search or self.params.ef_search, kk))
        elif self.kind == "ivf":
            search_params = faiss.SearchParametersIVF(nprobe=nprobe or self.params.nprobe)
        scores, ids = self._index.search(q, kk, params=search_params)
        return scores, ids

    def search(self, queries: np.ndarray, k: int = 10, **kwargs: Any) -> list[list[Hit]]:
        """The ``k`` nearest vectors to each query ``(Q, dim)`` (or ``(dim,)``), with their metadata.

        Keyword arguments as :meth:`search_ids` (``model``, ``strict_model``, ``nprobe``, ``ef_search``).
        """
        scores, ids = self.search_ids(queries, k, **kwargs)
        found = ids[ids >= 0]
        rows = self._metadata.take(found).to_pylist() if self._metadata.num_columns else [{}] * len(found)
        it = iter(rows)
        out: list[list[Hit]] = []
        for qi in range(len(ids)):
            hits = [Hit(qi, r, int(i), float(s), next(it)) for r, (i, s) in
                    enumerate((i, s) for i, s in zip(ids[qi], scores[qi]) if i >= 0)]
            out.append(hits)
        return out

    def search_frame(self, queries: np.ndarray, k: int = 10, **kwargs: Any) -> pd.DataFrame:
        """:meth:`search` as one table: ``query, rank, id, score`` and every metadata column."""
        from pathmllm.utils.optional import require

        pd = require("pandas", "search results as a DataFrame")
        hits = [h for per_query in self.search(queries, k, **kwargs) for h in per_query]
        base = pd.DataFrame({"query": [h.query for h in hits], "rank": [h.rank for h in hits],
                             "id": [h.id for h in hits], "score": [h.score for h in hits]})
        meta = pd.DataFrame([h.metadata for h in hits], columns=self._metadata.column_names)
        return pd.concat([base, meta], axis=1)

    # ---- save ----------------------------------------------------------------------
    def save(self) -> None:
        """Write a new generation of the data files, then the manifest; drop the old generation."""
        import pyarrow.parquet as pq

        if not self._dirty:
            return
        clean_stale_temps(self.folder)  # of a run killed while saving (readers never delete)
        gen = self._generation + 1
        files = self._files(gen)
        if files["index"]:
            with atomic_path(self.folder / files["index"]) as tmp:
                _faiss().write_index(self._index, str(tmp))
        if files["metadata"]:
            with atomic_path(self.folder / files["metadata"]) as tmp:
                pq.write_table(self._metadata.combine_chunks(), tmp)
        self._generation = gen
        write_json(self.folder / MANIFEST, self.manifest())
        self._dirty = False
        self._remove_old_generations(files)

    # ---- helpers -------------------------------------------------------------------
    def _files(self, gen: int) -> dict[str, str | None]:
        return {"index": f"index-{gen:06d}.faiss" if self._index is not None else None,
                "metadata": f"metadata-{gen:06d}.parquet" if self._metadata.num_columns else None}

    def _remove_old_generations(self, keep: Mapping[str, str | None]) -> None:
        """Delete data files of earlier generations (and of a run killed before its manifest)."""
        wanted = {v for v in keep.values() if v}
        for p in self.folder.iterdir():
            if p.is_file() and p.name not in wanted and p.name.startswith(("index-", "metadata-")):
                p.unlink(missing_ok=True)

    def _check_model(self, model: str | None, action: str, strict: bool) -> None:
        if not model or not self.model or model == self.model:
            return
        msg = (f"the index at {self.folder} holds vectors of model {self.model!r}; cannot {action} {model!r} "
               "(their embedding spaces differ). Use the index's model, or build a separate index for this model")
        if strict:
            raise errors.ModelMismatchError(msg)
        log.warning(msg)

    def _prepare(self, vectors: np.ndarray, what: str) -> np.ndarray:
        """Validated float32 ``(N, dim)`` copy (L2-normalised for cosine)."""
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise ValueError(f"{what} must be a (N, D) array, got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise errors.DimensionMismatchError(
                f"{what} have dimension {x.shape[1]}, but the index at {self.folder} holds {self.dim}-d vectors"
                f"{f' of model {self.model!r}' if self.model else ''}. Embed them with the index's model, "
                "or build a separate index for them")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{what} must be numbers, got dtype {x.dtype}")
        x = np.array(x, dtype=np.float32, order="C", copy=True)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = np.nonzero(~finite)[0]
            raise errors.InvalidVectorsError(
                f"{len(bad)} of the {what} contain NaN or infinite values (rows {_first(bad)}); "
                "fix or drop them before adding or searching")
        if self.metric == "cosine" and len(x):
            norms = np.linalg.norm(x, axis=1)
            if (norms == 0).any():
                raise errors.InvalidVectorsError(
                    f"{int((norms == 0).sum())} of the {what} are all zeros (rows {_first(np.nonzero(norms == 0)[0])}); "
                    "cosine similarity is undefined for them")
            x /= norms[:, None]
        return x


def _first(rows: np.ndarray, n: int = 5) -> str:
    head = ", ".join(str(int(r)) for r in rows[:n])
    return head + (", ..." if len(rows) > n else "")


def auto_nlist(n: int) -> int:
    """IVF cells for ``n`` training vectors: ``4 * sqrt(n)``, at most ``n / 39`` (FAISS's minimum
    of 39 training points per cell), at least 1."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def _new_faiss_index(dim: int, kind: str, metric: str, params: IndexParams, train: np.ndarray | None) -> Any:
    faiss = _faiss()
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlat(dim, faiss_metric)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss_metric)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        return index
    assert train is not None, "an IVF index is made when the first vectors arrive"
    nlist = params.nlist or auto_nlist(len(train))
    if nlist > max(1, len(train) // 39):
        nlist = auto_nlist(len(train))
        log.warning("IVF: %d vectors are too few to train %d cells; using %d. Add a larger first batch "
                    "(39+ vectors per cell) for a better index", len(train), params.nlist, nlist)
    params.nlist = nlist
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss_metric)
    log.info("IVF: training %d cells on %d vectors", nlist, len(train))
    index.train(train)
    return index
