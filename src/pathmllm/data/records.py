"""Read record files: JSONL (one JSON object per line), CSV or TSV, as a list of dicts."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class RecordProblem:
    """A record a dataset reader skipped (or kept with a note), with where and why."""

    source: str
    line: int
    reason: str
    skipped: bool = True
    index: int | None = None
    """Position of the record in the file, where the format has one."""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" + ("" if self.index is None else f" (record {self.index})")
        return f"{where}: {self.reason}" + ("" if self.skipped else " (kept)")


def read_records(path: str | os.PathLike[str], default: str | None = None) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` (blank lines skipped), ``.csv`` or ``.tsv`` file.

    ``default`` (e.g. ``".jsonl"``) is the format of a file with any other suffix; without it
    such a file is an error. Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming ``file:line`` for a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES and default is not None:
        suffix = default
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: expected a .jsonl, .csv or .tsv file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
