"""Embedded vector index (FAISS + Parquet metadata) and the files it is built from.

>>> from pathmllm.index import VectorIndex
>>> index = VectorIndex.create("my_index", dim=1536, kind="hnsw", model="tiny-qwen2-vl")
>>> index.add(vectors, [{"image": "a.png"}, ...]); index.save()
>>> VectorIndex.open("my_index").search(queries, k=10)
"""

from __future__ import annotations

from pathmllm.index.errors import (
    CorruptIndexError,
    DimensionMismatchError,
    EmptyIndexError,
    InvalidVectorsError,
    ModelMismatchError,
    NotAnIndexError,
)
from pathmllm.index.vector_index import KINDS, METRICS, Hit, IndexParams, VectorIndex
from pathmllm.index.vectors_file import read_vectors, write_vectors

__all__ = [
    "KINDS",
    "METRICS",
    "CorruptIndexError",
    "DimensionMismatchError",
    "EmptyIndexError",
    "Hit",
    "IndexParams",
    "InvalidVectorsError",
    "ModelMismatchError",
    "NotAnIndexError",
    "VectorIndex",
    "read_vectors",
    "write_vectors",
]
