"""Tile-classification folders (``<root>/<class>/<tile>``) with a ``groups.csv`` split by group.

``groups.csv`` has ``path,label,group`` per tile (LC25000 layout in ``shared/data``). Augmented
near-duplicates share a group, so splits are made by group, never by tile. Captions for
contrastive training are made from class names with templates.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

from pathmllm.data.pairs import PairRecord, Side

#: CLIP-style caption templates ({name} is the class's readable name)
CAPTION_TEMPLATES = (
    "an H&E image of {name}",
    "a histopathology tile showing {name}",
    "{name}",
    "microscopy of {name} tissue",
)


@dataclass(frozen=True)
class Tile:
    path: Path
    label: str
    group: str


def read_groups(root: str | os.PathLike[str], groups_csv: str | os.PathLike[str] | None = None) -> list[Tile]:
    """Tiles listed in ``groups.csv`` (default ``root/groups.csv``); paths relative to ``root``."""
    root = Path(root)
    csv_path = Path(groups_csv) if groups_csv else root / "groups.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no groups file (CSV with columns path,label,group)")
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label", "group"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected columns path,label,group")
    return [Tile(root / r["path"], r["label"], r["group"]) for r in rows]


def split_by_group(tiles: list[Tile], val_fraction: float = 0.3, seed: int = 0) -> tuple[list[Tile], list[Tile]]:
    """Hold out ``val_fraction`` of each class's groups (stratified); no group is in both parts."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    val_groups: set[str] = set()
    for label in sorted({t.label for t in tiles}):
        groups = sorted({t.group for t in tiles if t.label == label})
        rng.shuffle(groups)
        val_groups.update(groups[: max(1, round(len(groups) * val_fraction))])
    train = [t for t in tiles if t.group not in val_groups]
    val = [t for t in tiles if t.group in val_groups]
    return train, val


def caption_records(tiles: list[Tile], class_names: dict[str, str],
                    templates: tuple[str, ...] = CAPTION_TEMPLATES, seed: int = 0) -> list[PairRecord]:
    """One record per tile: query = the image, positive = a caption of its class (template drawn
    at random), key = the label (same-class captions are not negatives of each other)."""
    rng = random.Random(seed)
    missing = sorted({t.label for t in tiles} - set(class_names))
    if missing:
        raise ValueError(f"no readable class name for label(s) {missing}; give class_names for every label")
    return [PairRecord(Side(image=str(t.path)), Side(text=rng.choice(templates).format(name=class_names[t.label])),
                       key=t.label, extra={"label": t.label, "group": t.group}) for t in tiles]
