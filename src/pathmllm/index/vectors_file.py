"""``vectors.parquet``: embeddings with what they embed, one row per vector.

Written by ``pathmllm embed``, read by ``pathmllm index build --vectors``. One Parquet file::

    kind     string               image | text | pair
    image    string (nullable)    path of the image, null for a text
    text     string (nullable)    the text, null for an image
    vector   fixed_size_list<float32>[D]
    ...      any further columns of the records (label, slide, ...) are kept

Schema metadata: ``pathmllm.model`` (model name), ``pathmllm.dim`` (``D``),
``pathmllm.version``. Any Parquet reader opens it (pandas, polars, DuckDB); ``vector`` is a
list column, e.g. ``np.stack(pd.read_parquet(p)["vector"])``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathmllm.utils.atomic import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: record kinds of a vectors file
KINDS = ("image", "text", "pair")
MODEL_KEY = b"pathmllm.model"
DIM_KEY = b"pathmllm.dim"
VERSION_KEY = b"pathmllm.version"
_FIXED = ("kind", "image", "text")


def write_vectors(
    path: str | os.PathLike[str],
    vectors: np.ndarray,
    records: Sequence[Mapping[str, Any]],
    model: str | None,
) -> Path:
    """Write ``vectors`` ``(N, D)`` and one record per row (keys ``kind``, ``image``, ``text``,
    and any others) to ``path`` atomically; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmllm import __version__

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (N, D), got shape {vectors.shape}")
    n, dim = vectors.shape
    if len(records) != n:
        raise ValueError(f"{len(records)} records for {n} vectors; give one record per vector")
    for i, rec in enumerate(records):
        kind = rec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"record {i}: kind {kind!r} is not one of {', '.join(KINDS)}")
    columns: dict[str, Any] = {
        "kind": pa.array([r["kind"] for r in records], pa.string()),
        "image": pa.array([_str_or_none(r.get("image")) for r in records], pa.string()),
        "text": pa.array([_str_or_none(r.get("text")) for r in records], pa.string()),
    }
    extra = [k for r in records for k in r if k not in _FIXED and k != "vector"]
    for key in dict.fromkeys(extra):
        columns[key] = pa.array([_plain(r.get(key)) for r in records])
    flat = pa.array(vectors.reshape(-1), pa.float32())
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(columns)
    meta = {MODEL_KEY: (model or "").encode(), DIM_KEY: str(dim).encode(), VERSION_KEY: __version__.encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_vectors(path: str | os.PathLike[str]) -> tuple[np.ndarray, pd.DataFrame, str | None]:
    """``(vectors (N, D) float32, records DataFrame (every column but vector), model or None)``."""
    from pathmllm.utils.optional import require

    require("pandas", "reading vectors files")
    vectors, records, model = read_vectors_arrow(path)
    return vectors, records.to_pandas(), model


def read_vectors_arrow(path: str | os.PathLike[str]) -> tuple[np.ndarray, pa.Table, str | None]:
    """As :func:`read_vectors`, with the records as an Arrow table (no pandas needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vectors file (write one with `pathmllm embed`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a Parquet file ({exc})") from exc
    if "vector" not in table.column_names:
        raise ValueError(f"{path}: no 'vector' column; columns are {table.column_names}")
    vectors = vector_column_to_numpy(table.column("vector"), str(path))
    meta = table.schema.metadata or {}
    model = meta.get(MODEL_KEY, b"").decode() or None
    if DIM_KEY in meta and len(vectors) and int(meta[DIM_KEY]) != vectors.shape[1]:
        raise ValueError(f"{path}: schema says dim {int(meta[DIM_KEY])}, vectors have {vectors.shape[1]}")
    return vectors, table.drop(["vector"]).replace_schema_metadata(None), model


def vector_column_to_numpy(column: Any, where: str = "vector column") -> np.ndarray:
    """A (fixed-size or variable) list<float> Arrow column -> ``(N, D)`` float32."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if arr.null_count:
        raise ValueError(f"{where}: {arr.null_count} rows have no vector")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = np.diff(np.asarray(arr.offsets))
        if n and (lengths != lengths[0]).any():
            bad = int(np.nonzero(lengths != lengths[0])[0][0])
            raise ValueError(f"{where}: vectors differ in length ({lengths[0]} in row 0, {lengths[bad]} in row {bad})")
        dim = int(lengths[0]) if n else 0
    else:
        raise ValueError(f"{where}: expected a list of floats, got {arr.type}")
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values, dtype=np.float32).reshape(n, dim)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v
