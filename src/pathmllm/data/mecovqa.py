"""MeCoVQA grounding / region-VQA records (MedPLIB), their masks, and a Kvasir-SEG converter.

Reader for the MeCoVQA JSON lists (``FORMATS.md`` §4): complex VQA (C), region VQA (R, a
``<region>PATH</region>`` mask in the question) and grounding (G, ``<SEG><mask>PATH</mask>`` in
the answer). Images and masks live under the SA-Med2D ``SAMed2Dv1/`` root (``image_root``).

Quirks handled, as MedPLIB's ``LazySupervisedDataset`` does:

- ``image`` is relative to ``image_root``; some paths lack ``.png`` (the path is tried, then
  path + ``.png``); an absolute path is used as is; a path containing ``llavamed`` resolves
  against the *parent* of ``image_root``. Mask paths resolve the same way.
- ``conversations`` turns have ``from`` ``human`` or ``gpt``; a leading non-human turn is dropped;
  any other ``from`` skips the record (MedPLIB raises ``KeyError``). ``value`` is cast with ``str()``.
- ``<image>`` may sit anywhere and is removed. ``<region>PATH</region>`` (one per turn) leaves the
  empty ``<region></region>`` marker in the question; ``<mask>PATH</mask>`` (one per turn) is
  removed whole from the answer, which keeps ``<SEG>``.
- Masks are read grayscale, any value >= 1 is foreground (0/1 and 0/255 both work), at the image's
  own H x W (:func:`load_mask`). ``masks_merged/<stem>--<cls>_merged.png`` is rebuilt from
  ``masks/<stem>--<cls>_<inst>.png`` when a record needs it and it is absent
  (:func:`build_merged_masks`).
- Modality is the image-name prefix before the first ``_`` (``x_ray`` -> ``xray``); a string
  ``modality`` key in the record (written by :func:`kvasir_to_mecovqa`) takes precedence.
  Other unknown keys are ignored (``id`` is kept in ``meta``).

Like the slide-QA readers, :func:`read_mecovqa` never raises for a bad record: it is skipped and a
:class:`GroundingProblem` names ``file:line`` and the reason (``skipped=False`` marks a note on a
kept record, such as ``<SEG>`` without a target mask, usable for inference only).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathmllm.data.records import RecordProblem
from pathmllm.data.slide_qa_formats import iter_rows

AnswerType = Literal["open", "closed"]

SEG_TOKEN = "<SEG>"
REGION_MARKER = "<region></region>"
_IMAGE = re.compile(r"\s*<image>\s*", re.IGNORECASE)
_REGION = re.compile(r"<region>(.*?)</region>", re.DOTALL)
_MASK = re.compile(r"<mask>(.*?)</mask>", re.DOTALL)
_INSTANCE = re.compile(r"^(?P<stem>.+)--(?P<cls>\d+)_(?P<inst>\d+)\.png$")


@dataclass
class GroundingRecord:
    """One MeCoVQA question (C, R or G) about one image."""

    image: Path
    """The resolved image file."""
    question: str
    """The human turn: ``<image>`` removed, ``<region></region>`` kept where the region was."""
    answer: str
    """The gpt turn: ``<mask>PATH</mask>`` removed, ``<SEG>`` kept."""
    region_mask: Path | None = None
    """The resolved ``<region>`` mask (R), else None."""
    target_mask: Path | None = None
    """The resolved ``<mask>`` target (G), else None (also for ``<SEG>`` without ``<mask>``)."""
    has_seg: bool = False
    """True when the answer holds ``<SEG>``."""
    answer_type: AnswerType | None = None
    modality: str = ""
    source: str = ""
    index: int = 0
    """Position in the file; ``(source, index)`` is the record's key."""
    line: int = 0
    """1-based line where the record starts."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.index)

    @property
    def task(self) -> str:
        """``"grounding"`` (``<SEG>``), ``"region"`` (``<region>``) or ``"vqa"``."""
        return "grounding" if self.has_seg else "region" if self.region_mask is not None else "vqa"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("image", "region_mask", "target_mask"):
            d[k] = None if d[k] is None else str(d[k])
        return d


GroundingProblem = RecordProblem
"""Alias of :class:`pathmllm.data.records.RecordProblem`."""


Problem = GroundingProblem


# ---------------------------------------------------------------------------------------- masks
def load_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as a bool array: grayscale (``convert('L')``), any value >= 1 is foreground.

    ``size`` is the image's ``(H, W)``; a mask of another size raises ``ValueError`` (MedPLIB uses
    GT masks at the image's own resolution, without resizing).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im) >= 1  # convert('L') would clip 16-bit labels; keep the >= 1 rule
        else:
            arr = np.asarray(im.convert("L")) >= 1
    if size is not None:
        h, w = int(size[0]), int(size[1])
        if arr.shape != (h, w):
            raise ValueError(
                f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {w}x{h} (W x H); "
                "MeCoVQA masks must match the image's resolution"
            )
    return arr


def _save_png_atomic(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        Image.fromarray(arr.astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_merged_masks(image_root: str | os.PathLike[str]) -> int:
    """Write ``masks_merged/<stem>--<cls>_merged.png`` (0/255) for every ``(stem, cls)`` in ``masks/``.

    Each is the pixel-wise union of ``masks/<stem>--<cls>_<inst>.png`` (>= 1 = foreground).
    Existing merged files are left alone (idempotent); writes are atomic. Groups whose instance
    masks differ in size are skipped with a warning. Returns the number of files written.
    """
    root = Path(image_root)
    masks = root / "masks"
    if not masks.is_dir():
        return 0
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for p in sorted(masks.iterdir()):
        m = _INSTANCE.match(p.name)
        if m and p.is_file():
            groups[(m["stem"], m["cls"])].append(p)
    written = 0
    for (stem, cls), files in sorted(groups.items()):
        out = root / "masks_merged" / f"{stem}--{cls}_merged.png"
        if out.exists():
            continue
        union: np.ndarray | None = None
        for f in files:
            arr = load_mask(f)
            if union is None:
                union = arr.copy()
            elif arr.shape != union.shape:
                warnings.warn(f"{f}: size {arr.shape} differs from {files[0].name} {union.shape}; {out.name} not built",
                              stacklevel=2)
                union = None
                break
            else:
                union |= arr
        if union is None:
            continue
        _save_png_atomic(union.astype(np.uint8) * 255, out)
        written += 1
    return written


def _check_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    h, w = int(size_hw[0]), int(size_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size (H, W) = {size_hw} must be positive")
    return h, w


def box_mask(box_xyxy: tuple[float, float, float, float] | list[float], size_hw: tuple[int, int]) -> np.ndarray:
    """A bool mask of the inclusive box ``[x1, y1, x2, y2]`` (x = column, y = row) in an ``(H, W)`` image.

    Fills ``mask[y1:y2 + 1, x1:x2 + 1]`` (MedPLIB's demo fills the transpose; see FORMATS.md §4).
    Coordinates are rounded to pixels. Raises ``ValueError`` for an inverted box or one that
    reaches outside the image.
    """
    h, w = _check_size(size_hw)
    if len(box_xyxy) != 4:
        raise ValueError(f"box {box_xyxy!r} must be [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (int(round(float(v))) for v in box_xyxy)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {list(box_xyxy)} is inverted or empty: need x1 <= x2 and y1 <= y2")
    if x1 < 0 or y1 < 0 or x2 >= w or y2 >= h:
        raise ValueError(f"box {list(box_xyxy)} lies outside the {w}x{h} (W x H) image")
    mask = np.zeros((h, w), dtype=bool)
    mask[y1 : y2 + 1, x1 : x2 + 1] = True
    return mask


def point_mask(xy: tuple[float, float] | list[float], size_hw: tuple[int, int], radius: int = 20) -> np.ndarray:
    """A bool square mask ``row ± radius, col ± radius`` (clipped) around the point ``(x, y)`` = (col, row).

    MedPLIB's demo uses radius 20 (a 41 x 41 square). Raises ``ValueError`` for a point outside the image.
    """
    h, w = _check_size(size_hw)
    if len(xy) != 2:
        raise ValueError(f"point {xy!r} must be (x, y)")
    if radius < 0:
        raise ValueError(f"radius {radius} must be >= 0")
    x, y = (int(round(float(v))) for v in xy)
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point (x={xy[0]}, y={xy[1]}) lies outside the {w}x{h} (W x H) image")
    mask = np.zeros((h, w), dtype=bool)
    mask[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = True
    return mask


# ---------------------------------------------------------------------------------------- reader
def modality_of(image: str | os.PathLike[str]) -> str:
    """The SA-Med2D modality: the file-name prefix before the first ``_`` (``x_ray`` -> ``xray``)."""
    name = Path(image).name.casefold()
    if name.startswith("x_ray"):
        return "xray"
    return name.split("_", 1)[0] if "_" in name else ""


def resolve_path(ref: str, image_root: str | os.PathLike[str]) -> tuple[Path | None, list[Path]]:
    """``(file or None, tried paths)`` for an image or mask reference (FORMATS.md §4 rules)."""
    ref = ref.strip()
    root = Path(image_root)
    p = Path(ref)
    if p.is_absolute():
        base = p
    elif "llavamed" in ref:
        base = root.parent / p
    else:
        base = root / p
    tried = [base] if base.suffix.lower() == ".png" else [base, base.with_name(base.name + ".png")]
    for t in tried:
        if t.is_file():
            return t, tried
    return None, tried


class _Reader:
    def __init__(self, path: Path, image_root: Path, build_merged: bool, check_masks: bool) -> None:
        self.path = path
        self.root = image_root
        self.build_merged = build_merged
        self.check_masks = check_masks
        self.built = False
        self.records: list[GroundingRecord] = []
        self.problems: list[GroundingProblem] = []

    def skip(self, line: int, index: int | None, reason: str) -> None:
        self.problems.append(GroundingProblem(str(self.path), line, reason, True, index))

    def note(self, line: int, index: int | None, reason: str) -> None:
        self.problems.append(GroundingProblem(str(self.path), line, reason, False, index))

    def resolve_mask(self, ref: str) -> tuple[Path | None, list[Path]]:
        found, tried = resolve_path(ref, self.root)
        if found is None and self.build_merged and not self.built and "masks_merged" in ref:
            self.built = True
            build_merged_masks(self.root)
            found, tried = resolve_path(ref, self.root)
        return found, tried

    def record(self, line: int, index: int, obj: dict[str, Any]) -> None:
        image_ref = obj.get("image")
        if not isinstance(image_ref, str) or not image_ref.strip():
            self.skip(line, index, "no 'image' path")
            return
        conv = obj.get("conversations")
        if not isinstance(conv, list) or not conv:
            self.skip(line, index, "no 'conversations' list")
            return
        if not all(isinstance(t, dict) for t in conv):
            self.skip(line, index, "a conversation turn is not an object")
            return
        meta: dict[str, Any] = {"image_ref": image_ref}
        if conv[0].get("from") != "human":
            meta["dropped_turn"] = str(conv[0].get("from"))
            conv = conv[1:]
        bad = [t.get("from") for t in conv if t.get("from") not in ("human", "gpt")]
        if bad:
            self.skip(line, index, f"turn 'from' {bad[0]!r} is neither 'human' nor 'gpt' (MedPLIB raises KeyError)")
            return
        human = next((i for i, t in enumerate(conv) if t["from"] == "human"), None)
        gpt = next((i for i, t in enumerate(conv) if t["from"] == "gpt" and human is not None and i > human), None)
        if human is None or gpt is None:
            self.skip(line, index, "no human turn followed by a gpt turn")
            return
        if len(conv) > 2:
            self.note(line, index, f"{len(conv)} turns; only the first human/gpt pair is read")
        q_raw, a_raw = str(conv[human].get("value", "")), str(conv[gpt].get("value", ""))

        # ---- question: <image> anywhere, one <region>PATH</region>
        regions = _REGION.findall(q_raw)
        if len(regions) > 1:
            self.skip(line, index, f"{len(regions)} <region> tags in one turn; MeCoVQA allows one")
            return
        if _MASK.search(q_raw) or _REGION.search(a_raw):
            self.skip(line, index, "<mask> in the human turn or <region> in the gpt turn")
            return
        question = _REGION.sub(REGION_MARKER, q_raw)
        question = _IMAGE.sub(" ", question).strip()

        # ---- answer: one <mask>PATH</mask>, which needs <SEG>
        masks = _MASK.findall(a_raw)
        n_seg = a_raw.count(SEG_TOKEN)
        if masks and not n_seg:
            self.skip(line, index, "a conversation with <mask> but no <SEG> in the same turn")
            return
        if len(masks) > 1 or n_seg > 1:
            self.skip(line, index, f"{len(masks)} <mask> and {n_seg} <SEG> in one turn; MeCoVQA allows one")
            return
        answer = _IMAGE.sub(" ", _MASK.sub("", a_raw)).strip()
        if not question:
            self.skip(line, index, "empty question")
            return
        if not answer:
            self.skip(line, index, "empty answer")
            return

        # ---- files
        image, tried = resolve_path(image_ref, self.root)
        if image is None:
            self.skip(line, index, f"image {image_ref!r} not found; tried {', '.join(map(str, tried))}")
            return
        region_mask = target_mask = None
        for kind, refs in (("region", regions), ("mask", masks)):
            if not refs:
                continue
            ref = refs[0].strip()
            if not ref:
                self.skip(line, index, f"empty <{kind}> path")
                return
            found, tried = self.resolve_mask(ref)
            if found is None:
                self.skip(line, index, f"{kind} mask {ref!r} not found; tried {', '.join(map(str, tried))}")
                return
            meta[f"{kind}_ref"] = ref
            if kind == "region":
                region_mask = found
            else:
                target_mask = found
        if n_seg and target_mask is None:
            self.note(line, index, "<SEG> without <mask>: no target mask (usable for inference only)")
        if self.check_masks and (region_mask or target_mask):
            from PIL import Image

            with Image.open(image) as im:
                size = (im.height, im.width)
            for m in (region_mask, target_mask):
                if m is None:
                    continue
                try:
                    if not load_mask(m, size).any():
                        self.note(line, index, f"mask {m} has no foreground")
                except (ValueError, OSError) as exc:
                    self.skip(line, index, str(exc))
                    return

        answer_type = obj.get("answer_type")
        if answer_type is not None and answer_type not in ("open", "closed"):
            self.note(line, index, f"answer_type {answer_type!r} is neither 'open' nor 'closed'; ignored")
            answer_type = None
        modality = obj.get("modality") if isinstance(obj.get("modality"), str) else modality_of(image)
        for k in ("id", "split"):
            if obj.get(k) is not None:
                meta[k] = obj[k]
        self.records.append(
            GroundingRecord(
                image=image, question=question, answer=answer, region_mask=region_mask, target_mask=target_mask,
                has_seg=bool(n_seg), answer_type=answer_type, modality=modality, source=str(self.path),
                index=index, line=line, meta=meta,
            )
        )


def read_mecovqa(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    build_merged: bool = True,
    check_masks: bool = False,
) -> tuple[list[GroundingRecord], list[GroundingProblem]]:
    """Read one MeCoVQA JSON list into records, skipping and reporting bad ones (module docstring).

    ``image_root`` is the SA-Med2D ``SAMed2Dv1/`` folder. ``build_merged`` rebuilds a missing
    ``masks_merged/`` file from ``masks/`` the first time a record needs one. ``check_masks`` also
    loads every mask and skips records whose mask does not match the image's size (slower).
    Raises only for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    reader = _Reader(path, Path(image_root), build_merged, check_masks)
    for line, index, obj, error in iter_rows(path):
        if error is not None:
            reader.skip(line, index, error)
        elif not isinstance(obj, dict):
            reader.skip(line, index, f"expected a JSON object, got {type(obj).__name__}")
        else:
            reader.record(line, index, obj)
    return reader.records, reader.problems


# ---------------------------------------------------------------------------------------- Kvasir-SEG
def _stored_ref(p: Path, root: Path) -> str:
    """``p`` relative to ``root`` when inside it, else absolute (both resolve in :func:`resolve_path`)."""
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p.resolve())


def _background_box(polyp: np.ndarray, bh: int, bw: int, margin: float = 1.5) -> tuple[int, int, int, int] | None:
    """The ``bh x bw`` box (x1, y1, x2, y2) farthest from any polyp pixel, or None when none stays
    more than ``margin`` px away (not overlapping, not touching)."""
    from scipy.ndimage import distance_transform_edt

    h, w = polyp.shape
    if bh > h or bw > w or not polyp.any():
        return None
    dist = distance_transform_edt(~polyp)
    view = np.lib.stride_tricks.sliding_window_view
    win = view(view(dist, bw, axis=1).min(axis=-1), bh, axis=0).min(axis=-1)  # (h-bh+1, w-bw+1)
    y, x = np.unravel_index(int(np.argmax(win)), win.shape)
    if win[y, x] <= margin:
        return None
    return int(x), int(y), int(x) + bw - 1, int(y) + bh - 1


def kvasir_split(stems: list[str], test_fraction: float = 0.3, seed: int = 0) -> dict[str, str]:
    """``{stem: "train" | "test"}``: a seeded permutation of the sorted stems, the first
    ``round(n * test_fraction)`` going to test (deterministic for a given stem set and seed)."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction {test_fraction} must be in [0, 1]")
    stems = sorted(stems)
    perm = np.random.default_rng(seed).permutation(len(stems))
    n_test = int(round(len(stems) * test_fraction))
    test = {stems[i] for i in perm[:n_test]}
    return {s: "test" if s in test else "train" for s in stems}


def kvasir_to_mecovqa(
    kvasir_root: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    *,
    split: Literal["train", "test", "all"] = "all",
    test_fraction: float = 0.3,
    seed: int = 0,
    region_questions: bool = True,
    limit: int | None = None,
) -> Path:
    """Convert a Kvasir-SEG folder (``images/``, ``masks/``, ``bboxes.json``) to a MeCoVQA JSON list.

    Per image: a grounding record ("Segment the polyp." -> ``<SEG><mask>masks/<stem>.png</mask>``)
    and, with ``region_questions``, two closed region questions from boxes: the first
    ``bboxes.json`` box (rescaled from the original ``width``/``height`` to the image) -> "Yes",
    and a same-size box placed on background as far from the polyp as possible -> "No" (left out
    when no such box fits). The Kvasir masks are JPEG: under MeCoVQA's >= 1 foreground rule their
    compression noise would count as polyp, so binarised (>= 128) 0/255 PNG masks are written to
    ``<out_json parent>/masks/``, the box masks to ``<out_json parent>/regions/``. Image paths are
    relative to ``kvasir_root``; mask paths are relative to it when written inside it, else
    absolute, so ``read_mecovqa(out_json, kvasir_root)`` reads them. ``split`` keeps the train or
    test part of :func:`kvasir_split` (every record carries ``split``); ``limit`` keeps the first
    ``limit`` images (sorted by stem) of that part. Returns ``out_json``.
    """
    from PIL import Image

    root = Path(kvasir_root)
    out_json = Path(out_json)
    out_dir = out_json.parent
    if split not in ("train", "test", "all"):
        raise ValueError(f"split {split!r} must be 'train', 'test' or 'all'")
    images = {p.stem: p for p in sorted((root / "images").glob("*")) if p.is_file()}
    if not images:
        raise FileNotFoundError(f"{root / 'images'}: no images (expected a Kvasir-SEG folder)")
    mask_files = {p.stem: p for p in sorted((root / "masks").glob("*")) if p.is_file()}
    boxes_path = root / "bboxes.json"
    boxes = json.loads(boxes_path.read_text(encoding="utf-8")) if boxes_path.is_file() else {}
    stems = sorted(s for s in images if s in mask_files)
    missing = sorted(set(images) - set(mask_files))
    if missing:
        warnings.warn(f"{len(missing)} Kvasir images have no mask and are left out (first: {missing[0]})", stacklevel=2)
    parts = kvasir_split(stems, test_fraction, seed)
    chosen = [s for s in stems if split == "all" or parts[s] == split]
    if limit is not None:
        chosen = chosen[: max(0, int(limit))]

    records: list[dict[str, Any]] = []
    for stem in chosen:
        with Image.open(images[stem]) as im:
            w, h = im.size
        with Image.open(mask_files[stem]) as im:
            polyp = np.asarray(im.convert("L")) >= 128
        if polyp.shape != (h, w):
            warnings.warn(f"{mask_files[stem]}: mask {polyp.shape[::-1]} != image {(w, h)}; left out", stacklevel=2)
            continue
        mask_path = out_dir / "masks" / f"{stem}.png"
        _save_png_atomic(polyp.astype(np.uint8) * 255, mask_path)
        image_ref = _stored_ref(images[stem], root)
        common = {"modality": "endoscopy", "split": parts[stem]}
        records.append({
            "id": f"kvasir-{stem}-seg", "image": image_ref, **common,
            "conversations": [
                {"from": "human", "value": "<image>\nSegment the polyp."},
                {"from": "gpt", "value": f"<SEG><mask>{_stored_ref(mask_path, root)}</mask>"},
            ],
        })
        entry = boxes.get(stem) if isinstance(boxes, dict) else None
        if not region_questions or not isinstance(entry, dict) or not entry.get("bbox"):
            continue
        b = entry["bbox"][0]
        sx, sy = w / float(entry.get("width") or w), h / float(entry.get("height") or h)
        x1 = min(max(int(round(b["xmin"] * sx)), 0), w - 1)
        y1 = min(max(int(round(b["ymin"] * sy)), 0), h - 1)
        x2 = min(max(int(round(b["xmax"] * sx)), x1), w - 1)
        y2 = min(max(int(round(b["ymax"] * sy)), y1), h - 1)
        boxes_for = [("polyp", (x1, y1, x2, y2), "Yes")]
        bg = _background_box(polyp, y2 - y1 + 1, x2 - x1 + 1)
        if bg is not None:
            boxes_for.append(("background", bg, "No"))
        for kind, box, answer in boxes_for:
            region_path = out_dir / "regions" / f"{stem}_{kind}.png"
            _save_png_atomic(box_mask(box, (h, w)).astype(np.uint8) * 255, region_path)
            records.append({
                "id": f"kvasir-{stem}-{kind}", "image": image_ref, **common, "answer_type": "closed",
                "box_xyxy": list(box),
                "conversations": [
                    {"from": "human",
                     "value": f"<image>\nIs there a polyp in this region? <region>{_stored_ref(region_path, root)}</region>"},
                    {"from": "gpt", "value": answer},
                ],
            })

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_name(f".{out_json.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out_json)
    finally:
        tmp.unlink(missing_ok=True)
    return out_json
