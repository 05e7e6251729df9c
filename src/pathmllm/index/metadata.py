"""Metadata rows of an index as an Arrow table: conversion from what users pass, and appends."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

#: columns every search result has; metadata may not use these names
RESERVED_COLUMNS = frozenset({"query", "rank", "id", "score"})


def empty_rows(n: int) -> pa.Table:
    """A table of ``n`` rows and no columns."""
    return pa.table({"_": pa.nulls(n)}).drop(["_"])


def to_table(metadata: Any) -> pa.Table:
    """A list of dicts, a pandas DataFrame or an Arrow table -> an Arrow table (paths as strings,
    NumPy scalars as Python numbers)."""
    if isinstance(metadata, pa.Table):
        return metadata
    if type(metadata).__name__ == "DataFrame" and hasattr(metadata, "to_dict"):
        return pa.Table.from_pandas(metadata, preserve_index=False)
    if isinstance(metadata, Mapping) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a list of dicts, a pandas DataFrame or a pyarrow Table, "
                        f"got {type(metadata).__name__}")
    rows = []
    for i, row in enumerate(metadata):
        if not isinstance(row, Mapping):
            raise TypeError(f"metadata row {i} is a {type(row).__name__}, not a dict")
        rows.append({str(k): _plain(v) for k, v in row.items()})
    if not rows:
        return empty_rows(0)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"metadata values of one key must share a type ({exc})") from exc


def append_rows(old: pa.Table, new: pa.Table) -> pa.Table:
    """``old`` then ``new``; a column missing on one side is null there. Columns whose types
    cannot be unified (int in the index, text in the new rows) are an error."""
    if not new.num_rows:
        return old
    if not old.num_rows:
        return new
    try:
        return pa.concat_tables([old, new], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        types = {f.name: f.type for f in old.schema}
        diff = [f"{f.name} ({types[f.name]} in the index, {f.type} in the new rows)"
                for f in new.schema if f.name in types and types[f.name] != f.type]
        raise ValueError(f"metadata columns do not match the index: {', '.join(diff) or exc}; "
                         "give each column the type it already has") from exc


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
