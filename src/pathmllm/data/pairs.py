"""Contrastive training records: a JSONL manifest of query / positive / optional negative.

One JSON object per line; each side is an image path, a text, or both::

    {"query": {"image": "tiles/a.jpg"}, "positive": {"text": "lung adenocarcinoma"},
     "negative": {"text": "benign lung tissue"}, "key": "lung_aca"}

Flat keys are accepted too (``query_image``, ``query_text``, ``positive_text`` …). Relative image
paths are relative to the manifest's folder. ``key`` (optional) names what the positive is, so
rows sharing it are not used as each other's negatives (false-negative masking); ``label`` and
any other fields are kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SIDES = ("query", "positive", "negative")


@dataclass(frozen=True)
class Side:
    """One input: an image path, a text, or both (then it is an image+text pair)."""

    image: str | None = None
    text: str | None = None

    @property
    def kind(self) -> Literal["image", "text", "pair"]:
        if self.image and self.text:
            return "pair"
        return "image" if self.image else "text"


@dataclass(frozen=True)
class PairRecord:
    """A query, its positive, an optional hard negative, and metadata."""

    query: Side
    positive: Side
    negative: Side | None = None
    key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _side(obj: dict[str, Any], name: str, root: Path, where: str) -> Side | None:
    nested = obj.get(name)
    if isinstance(nested, str):
        raise ValueError(f"{where}: '{name}' must be an object like {{\"image\": ...}} or {{\"text\": ...}}")
    nested = nested or {}
    image = nested.get("image", obj.get(f"{name}_image"))
    text = nested.get("text", obj.get(f"{name}_text"))
    if image is None and text is None:
        return None
    if text is not None and not str(text).strip():
        raise ValueError(f"{where}: the {name} text is empty")
    if image is not None:
        p = Path(image)
        image = str(p if p.is_absolute() else root / p)
    return Side(image=image, text=text)


def read_pairs_manifest(path: str | os.PathLike[str]) -> list[PairRecord]:
    """Parse a JSONL manifest; every line needs a query and a positive."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest (JSONL of query / positive / negative records)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        query, positive = _side(obj, "query", path.parent, where), _side(obj, "positive", path.parent, where)
        if query is None or positive is None:
            raise ValueError(f"{where}: a record needs a query and a positive (each an image, a text or both)")
        negative = _side(obj, "negative", path.parent, where)
        extra = {k: v for k, v in obj.items() if k not in SIDES and k != "key"
                 and not any(k.startswith(f"{s}_") for s in SIDES)}
        key = obj.get("key")
        records.append(PairRecord(query, positive, negative, None if key is None else str(key), extra))
    if not records:
        raise ValueError(f"{path}: the manifest has no records")
    return records


def write_pairs_manifest(path: str | os.PathLike[str], records: list[PairRecord]) -> Path:
    """Write records as JSONL (image paths relative to the manifest's folder when below it)."""
    from pathmllm.utils.atomic import write_text

    path = Path(path)
    root = path.parent.resolve()

    def side(s: Side) -> dict[str, str]:
        out: dict[str, str] = {}
        if s.image:
            p = Path(s.image).resolve()
            out["image"] = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
        if s.text:
            out["text"] = s.text
        return out

    lines = []
    for r in records:
        obj: dict[str, Any] = {"query": side(r.query), "positive": side(r.positive)}
        if r.negative is not None:
            obj["negative"] = side(r.negative)
        if r.key is not None:
            obj["key"] = r.key
        obj.update(r.extra)
        lines.append(json.dumps(obj, ensure_ascii=False))
    write_text(path, "\n".join(lines) + "\n")
    return path
