"""Hugging Face parquet copies of PMEB datasets (``1aurent/PatchCamelyon``,
``dpdl-benchmark/patch_camelyon``, ``1aurent/LC25000``, ``wisdomik/Quilt_VQA``).

A Hub dataset stores each split as ``<split>-NNNNN-of-NNNNN[-<hash>].parquet`` files (usually under
``data/``). Images are an ``Image`` feature: a struct column ``{bytes, path}``. Class labels are a
``ClassLabel`` (an integer whose names are in the file's ``huggingface`` schema metadata), a bool
or a string. Only the columns a loader needs are read, and images stay in the file until
:func:`read_parquet_images` decodes the rows a chunk needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import (
    DatasetLayoutError,
    ParquetImage,
    decode_image,
    find_dir,
    is_junk,
)

_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z_]+?)(?:-\d{5}-of-\d{5})?(?:-[0-9a-f]{6,})?\.parquet$")


def _parquet_names(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".parquet" and not is_junk(p.name))
    except OSError:
        return []


def find_parquet_splits(root: Path, max_depth: int = 3) -> dict[str, list[Path]]:
    """``{split: [files]}`` of the shallowest folder at or under ``root`` holding parquet files
    named like a Hub split (``train-00000-of-00001-<hash>.parquet``, ``test.parquet`` ...)."""
    folder = find_dir(root, lambda d: bool(_parquet_names(d)), max_depth)
    if folder is None:
        return {}
    out: dict[str, list[Path]] = {}
    for name in _parquet_names(folder):
        m = _SPLIT_FILE.match(name)
        if m:
            out.setdefault(m.group("split").lower(), []).append(folder / name)
    return out


def _schema(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def image_column(path: Path) -> str:
    """The ``Image`` column: ``image`` if present, else the one struct column with a ``bytes`` field."""
    import pyarrow as pa

    schema = _schema(path)
    candidates = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    if "image" in candidates:
        return "image"
    if len(candidates) != 1:
        raise DatasetLayoutError(f"{path}: expected one Hugging Face Image column (a struct with 'bytes'); found "
                                 f"{', '.join(candidates) or 'none'} among {', '.join(schema.names)}")
    return candidates[0]


def class_label_names(path: Path, column: str) -> list[str] | None:
    """The ``ClassLabel`` names of ``column`` from the file's Hugging Face metadata, if any."""
    meta = _schema(path).metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return None
    feature = features.get(column) if isinstance(features, dict) else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(n) for n in feature["names"]]
    return None


def label_column(path: Path, image_col: str, preferred: Sequence[str] = ("label",)) -> str:
    """``label`` (or another preferred name) if present, else the only column besides the image."""
    names = [n for n in _schema(path).names if n != image_col]
    for p in preferred:
        if p in names:
            return p
    if len(names) == 1:
        return names[0]
    raise DatasetLayoutError(f"{path}: cannot tell the label column among {', '.join(names)}; expected 'label'")


def read_columns(files: Sequence[Path], columns: Sequence[str]) -> dict[str, list[Any]]:
    """``columns`` of all ``files`` (in order) as Python lists; image columns are not read here."""
    import pyarrow.parquet as pq

    out: dict[str, list[Any]] = {c: [] for c in columns}
    for f in files:
        missing = [c for c in columns if c not in _schema(f).names]
        if missing:
            raise DatasetLayoutError(f"{f}: lacks the column(s) {', '.join(missing)} (has: {', '.join(_schema(f).names)})")
        table = pq.read_table(f, columns=list(columns))
        for c in columns:
            out[c] += table.column(c).to_pylist()
    return out


def image_refs(files: Sequence[Path], column: str) -> list[ParquetImage]:
    """One reference per row of ``files``."""
    import pyarrow.parquet as pq

    refs: list[ParquetImage] = []
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        refs += [ParquetImage(str(f), column, i) for i in range(n)]
    return refs


def image_paths(files: Sequence[Path], column: str) -> list[str | None]:
    """The ``path`` field of the Image column (the original file name), row by row."""
    import pyarrow.parquet as pq

    out: list[str | None] = []
    for f in files:  # only the nested 'path' field is read, not the image bytes
        values = pq.read_table(f, columns=[f"{column}.path"]).column(0).to_pylist()
        out += [str(v) if v else None for v in values]
    return out


def read_parquet_images(path: Path, column: str, rows: Sequence[int]) -> list[np.ndarray]:
    """Rows ``rows`` of the Image column ``column``, decoded to ``(H, W, 3)`` uint8; only the row
    groups holding them are read."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    wanted = np.asarray(rows)
    groups = sorted({int(np.searchsorted(starts, r, side="right") - 1) for r in wanted})
    table = pf.read_row_groups(groups, columns=[column])
    offsets = {g: int(sum(starts[h + 1] - starts[h] for h in groups[:k])) for k, g in enumerate(groups)}
    structs = table.column(column)
    out = []
    for r in wanted:
        g = int(np.searchsorted(starts, r, side="right") - 1)
        value = structs[offsets[g] + int(r - starts[g])].as_py()
        data = value.get("bytes") if isinstance(value, dict) else None
        if not data:
            raise DatasetLayoutError(f"{path}: row {r} of {column!r} holds no image bytes")
        out.append(decode_image(data))
    return out


def labelled_rows(files: Sequence[Path], preferred: Sequence[str] = ("label",)
                  ) -> tuple[list[ParquetImage], list[Any], list[str] | None]:
    """Image references, label values and (for a ``ClassLabel``) label names of ``files``."""
    img = image_column(files[0])
    lab = label_column(files[0], img, preferred)
    values = read_columns(files, [lab])[lab]
    return image_refs(files, img), values, class_label_names(files[0], lab)
