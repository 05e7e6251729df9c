"""A generic CSV / JSONL manifest for any dataset without a built-in loader.

Use it as ``--task zero-shot:manifest:/data/mine.csv``. The columns decide the kind:

- ``image,label`` (optional ``split``, ``group``, ``class_name``): classification;
- ``image,caption`` (one row per image-caption pair; repeat an image for more captions):
  cross-modal retrieval;
- ``image,question,answer`` (optional ``options`` as a JSON list or ``a|b|c``, ``answer_index``,
  ``target_image``): composed retrieval and multiple choice.

Image paths are relative to the manifest's folder (or absolute).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.bench.datasets.base import (
    DEFAULT_TEMPLATES,
    ClassificationSet,
    Data,
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    SplitNotAvailableError,
    VQASet,
)
from pathmllm.bench.datasets.captions import caption_set


def read_manifest(path: Path) -> list[dict[str, Any]]:
    from pathmllm.data.records import read_records

    if not path.is_file():
        raise DatasetLayoutError(f"manifest {path} does not exist")
    try:
        return read_records(path)
    except ValueError as exc:
        raise DatasetLayoutError(str(exc).replace("expected a .jsonl", "a manifest is a .jsonl")) from None


def manifest_kind(rows: list[dict[str, Any]], path: Path) -> str:
    cols = set(rows[0]) if rows else set()
    if "image" not in cols:
        raise DatasetLayoutError(f"{path}: a manifest needs an 'image' column (has: {', '.join(sorted(cols)) or 'no rows'})")
    if "label" in cols:
        return "classification"
    if "caption" in cols:
        return "captions"
    if {"question", "answer"} <= cols:
        return "vqa"
    raise DatasetLayoutError(f"{path}: add a 'label' (classification), 'caption' (retrieval) or 'question' and "
                             f"'answer' (composed retrieval) column; has: {', '.join(sorted(cols))}")


def _options(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [v.strip() for v in text.split("|") if v.strip()]


def load_manifest(path: Path, split: str | None = None) -> Data:
    rows = read_manifest(path)
    kind = manifest_kind(rows, path)
    base = path.parent
    name = f"manifest:{path.name}"
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if str(r.get("split", "")) == split]
        if not rows:
            raise SplitNotAvailableError(f"{path}: no row has split = {split}")
    present, missing = [], []
    for n, r in enumerate(rows, 2 if path.suffix.lower() != ".jsonl" else 1):
        p = base / str(r["image"])
        if not p.is_file():
            missing.append(f"{r['image']} (line {n})")
        else:
            present.append((str(p), r))
    if missing:  # your own manifest: absent images are an error, not a known gap of a public download
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetLayoutError(f"{name}: {len(missing)} of {len(rows)} rows name images that are not in {base} "
                                 f"(e.g. {shown}). Fix the image paths (relative to the manifest's folder).")
    if kind == "classification":
        keys = sorted({str(r["label"]) for _, r in present})
        readable = {str(r["label"]): str(r.get("class_name") or r["label"]) for _, r in present}
        groups = [str(r["group"]) for _, r in present] if rows and "group" in rows[0] else None
        return ClassificationSet(name, [p for p, _ in present], np.array([keys.index(str(r["label"])) for _, r in present]),
                                 keys, [readable[k] for k in keys], DEFAULT_TEMPLATES, groups=groups, split=split)
    if kind == "captions":
        return caption_set(name, [(p, str(r["caption"])) for p, r in present])
    has_opts = bool(rows) and "options" in rows[0]
    options = [_options(r["options"]) for _, r in present] if has_opts else None
    answer_index = None
    if options is not None:
        answer_index = []
        for (_, r), opts in zip(present, options):
            idx = int(r["answer_index"]) if str(r.get("answer_index", "")).strip() else (
                opts.index(str(r["answer"])) if str(r["answer"]) in opts else -1)
            if not 0 <= idx < len(opts):
                raise DatasetLayoutError(f"{path}: answer {r['answer']!r} is none of the options {opts}")
            answer_index.append(idx)
    targets: list[ImageRef] | None = None
    if rows and "target_image" in rows[0]:
        targets = []
        for _, r in present:
            t = base / str(r["target_image"])
            if not t.is_file():
                raise DatasetLayoutError(f"{path}: target image {r['target_image']} does not exist in {base}")
            targets.append(str(t))
    return VQASet(name, [p for p, _ in present], [str(r["question"]) for _, r in present],
                  [str(r["answer"]) for _, r in present], options, answer_index, targets)


def manifest_info(path_text: str) -> DatasetInfo:
    path = Path(path_text).expanduser()
    rows = read_manifest(path)
    kind = manifest_kind(rows, path)

    def load(root: Path, split: str | None = None) -> Data:
        return load_manifest(path, split)

    return DatasetInfo(f"manifest:{path}", kind, load, folders=(), url=str(path),  # type: ignore[arg-type]
                       layout="CSV/JSONL manifest: image + label | caption | question,answer",
                       splits=("train", "test") if "split" in rows[0] else (), description="generic manifest")
