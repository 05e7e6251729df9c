"""Errors of the vector index; each message says what was wrong and what to do."""

from __future__ import annotations


class NotAnIndexError(FileNotFoundError):
    """The folder does not hold a pathmllm vector index."""


class CorruptIndexError(RuntimeError):
    """The index files disagree with each other (count of vectors, metadata rows)."""


class DimensionMismatchError(ValueError):
    """Vectors of another dimension than the index's."""


class ModelMismatchError(ValueError):
    """Vectors made by another model than the index's."""


class EmptyIndexError(ValueError):
    """A search of an index that holds no vectors."""


class InvalidVectorsError(ValueError):
    """NaN, infinite or (for cosine) all-zero vectors."""
