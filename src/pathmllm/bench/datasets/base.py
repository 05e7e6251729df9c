"""What a benchmark dataset is once loaded, the dataset registry, and shared loader helpers.

Three shapes of data cover PMEB:

- :class:`ClassificationSet`: images with one class each (zero-shot, linear probe, kNN);
- :class:`CaptionSet`: images and captions, any number of captions per image and of images per
  caption (cross-modal retrieval);
- :class:`VQASet`: image + question queries with an answer text, optionally answer options or a
  target image (composed retrieval, multiple choice).

Images are referenced, not loaded: a file path, or an :class:`H5Image` (one image inside an HDF5
array, as PCam ships). :func:`read_images` turns a chunk of references into what an embedder
takes, so a 300 000-image set never sits in memory at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from pathmllm.utils.registry import Registry

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DataKind = Literal["classification", "captions", "vqa"]

#: CLIP-style prompt templates for pathology zero-shot classification ({name}: the class name)
DEFAULT_TEMPLATES = (
    "an H&E image of {name}.",
    "a histopathology image of {name}.",
    "a photomicrograph showing {name}.",
    "presence of {name} tissue on image.",
    "{name}.",
)


class DatasetLayoutError(ValueError):
    """A dataset folder that is not in the layout its public download has."""


class DatasetNotFoundError(FileNotFoundError):
    """No folder for a dataset under the data root (nor given explicitly)."""


class SplitNotAvailableError(DatasetLayoutError):
    """A native split (e.g. ``train``) that this copy of the dataset does not have."""


@dataclass(frozen=True)
class H5Image:
    """One image stored in an HDF5 array: ``h5py.File(path)[key][index]`` is ``(H, W, 3)`` uint8."""

    path: str
    key: str
    index: int


ImageRef = Union[str, H5Image]


@dataclass
class ClassificationSet:
    """Images with one class each. ``labels[i]`` indexes ``classes`` (raw label keys) and
    ``class_names`` (the readable names prompts are made of)."""

    name: str
    images: list[ImageRef]
    labels: np.ndarray
    classes: list[str]
    class_names: list[str]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    groups: list[str] | None = None
    """Near-duplicate / patient groups; train-test splits never cut a group."""
    split: str | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class CaptionSet:
    """Images and unique caption texts; ``positives[i]`` lists the caption indices of image ``i``.
    Identical captions are stored once, so a caption shared by several images is one gallery item
    with several matching images."""

    name: str
    images: list[ImageRef]
    texts: list[str]
    positives: list[list[int]]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class VQASet:
    """Image + question queries. ``answers[i]`` is the correct answer text; ``options[i]`` the
    choices of a multiple-choice question (``answer_index[i]`` the correct one); ``targets[i]`` a
    target image for image-target composed retrieval."""

    name: str
    images: list[ImageRef]
    questions: list[str]
    answers: list[str]
    options: list[list[str]] | None = None
    answer_index: list[int] | None = None
    targets: list[ImageRef] | None = None

    def __len__(self) -> int:
        return len(self.images)


Data = Union[ClassificationSet, CaptionSet, VQASet]
Loader = Callable[..., Data]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: how to load its public download and where it is published."""

    name: str
    kind: DataKind
    load: Loader
    """``load(root, split=None) -> Data``; ``split=None`` is the set zero-shot evaluates on."""
    folders: tuple[str, ...]
    """Folder names looked for under ``--data-root``."""
    url: str
    layout: str
    """The expected layout in one line (shown in errors and ``pathmllm bench ls``)."""
    reference: str = ""
    licence: str = "see the publisher"
    splits: tuple[str, ...] = ()
    """Native splits the download has (``train`` is what linear probes and kNN fit on)."""
    class_names: dict[str, str] = field(default_factory=dict)
    description: str = ""


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Register a dataset; its ``load`` then accepts a ``str`` or ``Path`` root."""
    raw = info.load

    def load(root: str | os.PathLike[str], split: str | None = None) -> Data:
        return raw(Path(root).expanduser(), split)

    info = replace(info, load=load)
    DATASETS.add(info.name, info, kind=info.kind)
    return info


def load_builtin_datasets() -> None:
    from pathmllm.bench.datasets import captions, classification, tables, vqa  # noqa: F401


def dataset_info(name: str) -> DatasetInfo:
    load_builtin_datasets()
    if name.startswith("manifest:"):
        from pathmllm.bench.datasets.manifest import manifest_info

        return manifest_info(name.partition(":")[2])
    return DATASETS.get(name)


def find_dataset_root(info: DatasetInfo, data_root: str | os.PathLike[str] | None = None,
                      explicit: str | os.PathLike[str] | None = None) -> Path:
    """The dataset's folder: ``explicit`` if given, else the first of ``info.folders`` under
    ``data_root``; a clear error naming what was looked for otherwise."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise DatasetNotFoundError(f"{info.name}: {p} does not exist (expected: {info.layout})")
        return p
    if data_root is None:
        raise DatasetNotFoundError(f"{info.name}: no data folder given; pass --data-root DIR (with one of "
                                   f"{', '.join(info.folders)} in it) or --data {info.name}=PATH")
    root = Path(data_root).expanduser()
    for folder in info.folders:
        if (root / folder).exists():
            return root / folder
    raise DatasetNotFoundError(
        f"{info.name}: none of {', '.join(info.folders)} is in {root}. Download it from {info.url}, unpack it "
        f"there, or pass --data {info.name}=PATH. Expected layout: {info.layout}")


# ---- loader helpers ---------------------------------------------------------------------
def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files skipped)."""
    it: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def class_folder_set(name: str, folder: Path, class_names: dict[str, str], templates: tuple[str, ...],
                     split: str | None = None, groups_csv: bool = True) -> ClassificationSet:
    """A ``<folder>/<class>/<image>`` set with exactly the classes of ``class_names``; every class
    folder must exist and hold images. A ``groups.csv`` (``path,label,group``) beside them is used."""
    missing = [c for c in class_names if not (folder / c).is_dir()]
    if missing:
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise DatasetLayoutError(
            f"{name}: expected one folder per class in {folder}; missing {', '.join(missing)} "
            f"(found: {', '.join(found) or 'no folders'})")
    images: list[ImageRef] = []
    labels: list[int] = []
    for i, cls in enumerate(class_names):
        files = list_images(folder / cls)
        if not files:
            raise DatasetLayoutError(f"{name}: class {cls!r} has no images: {folder / cls} holds no "
                                     f"{'/'.join(IMAGE_SUFFIXES)} files")
        images += [str(f) for f in files]
        labels += [i] * len(files)
    groups = _read_groups(folder, images) if groups_csv and (folder / "groups.csv").is_file() else None
    return ClassificationSet(name, images, np.array(labels), list(class_names), list(class_names.values()),
                             templates, groups=groups, split=split)


def _read_groups(folder: Path, images: list[ImageRef]) -> list[str] | None:
    from pathmllm.data.tile_classes import read_groups

    by_path = {str(t.path): t.group for t in read_groups(folder)}
    groups = [by_path.get(str(p)) for p in images]
    if any(g is None for g in groups):
        log.warning("%s: groups.csv does not list every image; ignoring it", folder)
        return None
    return groups  # type: ignore[return-value]


def first_existing(base: Path, candidates: Sequence[str]) -> Path | None:
    for c in candidates:
        if (base / c).exists():
            return base / c
    return None


def report_missing(name: str, missing: list[str], total: int, where: Path, what: str,
                   allowed: int = 0) -> None:
    """Raise a clear error for listed-but-absent images, or warn when at most ``allowed`` are
    absent (a known gap of the public download)."""
    if not missing:
        return
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    if len(missing) <= allowed:
        log.warning("%s: %d of %d %s name images absent from %s (a known gap of the public download); "
                    "leaving them out: %s", name, len(missing), total, what, where, shown)
        return
    raise DatasetLayoutError(
        f"{name}: {len(missing)} of {total} {what} name images that are not in {where} (e.g. {shown}). "
        "Unpack the full image archive there, or fix the file's image names.")


# ---- images and subsets -----------------------------------------------------------------
def ref_id(ref: ImageRef) -> str:
    return f"{ref.path}::{ref.key}[{ref.index}]" if isinstance(ref, H5Image) else str(ref)


def read_images(refs: Sequence[ImageRef]) -> list[Any]:
    """Paths stay paths (the embedder reads them); HDF5 references become ``(H, W, 3)`` uint8
    arrays, each file opened once per call."""
    out: list[Any] = list(refs)
    by_file: dict[tuple[str, str], list[int]] = {}
    for i, ref in enumerate(refs):
        if isinstance(ref, H5Image):
            by_file.setdefault((ref.path, ref.key), []).append(i)
    if by_file:
        import h5py

        for (path, key), positions in by_file.items():
            with h5py.File(path, "r") as f:
                indices = np.array([refs[i].index for i in positions])  # type: ignore[union-attr]
                order = np.argsort(indices)
                arr = f[key][indices[order]]  # h5py needs increasing indices
                for j, o in enumerate(order):
                    out[positions[o]] = np.ascontiguousarray(arr[j], dtype=np.uint8)
    return out


def fingerprint_refs(refs: Iterable[ImageRef]) -> str:
    """A hash of image references with each file's size and modification time, so a replaced
    image changes the key."""
    h = hashlib.sha256()
    seen_h5: set[str] = set()
    for ref in refs:
        path = ref.path if isinstance(ref, H5Image) else str(ref)
        h.update(ref_id(ref).encode())
        if isinstance(ref, H5Image):
            if path in seen_h5:
                continue
            seen_h5.add(path)
        try:
            st = os.stat(path)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(b"|absent\n")
    return h.hexdigest()


def subsample(data: Data, limit: int | None, seed: int = 0) -> Data:
    """At most ``limit`` queries (stratified by class for classification), for quick runs."""
    if limit is None or len(data) <= limit:
        return data
    rng = random.Random(seed)
    if isinstance(data, ClassificationSet):
        by_class = {c: np.flatnonzero(data.labels == c).tolist() for c in np.unique(data.labels)}
        for idx in by_class.values():
            rng.shuffle(idx)
        keep: list[int] = []
        while len(keep) < limit:  # round-robin over classes keeps every class represented
            for idx in by_class.values():
                if idx and len(keep) < limit:
                    keep.append(idx.pop())
        return take(data, sorted(keep))
    keep = sorted(rng.sample(range(len(data)), limit))
    return take(data, keep)


def take(data: Data, idx: Sequence[int]) -> Data:
    """The items ``idx`` of a set (captions re-indexed to those the kept images use)."""
    if isinstance(data, ClassificationSet):
        return replace(data, images=[data.images[i] for i in idx], labels=data.labels[list(idx)],
                       groups=[data.groups[i] for i in idx] if data.groups else None)
    if isinstance(data, CaptionSet):
        used = sorted({t for i in idx for t in data.positives[i]})
        remap = {t: j for j, t in enumerate(used)}
        return CaptionSet(data.name, [data.images[i] for i in idx], [data.texts[t] for t in used],
                          [[remap[t] for t in data.positives[i]] for i in idx])

    def pick(xs: list[Any] | None) -> list[Any] | None:
        return [xs[i] for i in idx] if xs is not None else None

    return VQASet(data.name, pick(data.images), pick(data.questions), pick(data.answers),  # type: ignore[arg-type]
                  pick(data.options), pick(data.answer_index), pick(data.targets))


def split_train_test(data: ClassificationSet, test_fraction: float = 0.3,
                     seed: int = 0) -> tuple[ClassificationSet, ClassificationSet]:
    """Stratified train/test split; by group when the set has groups (no group in both parts)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    keys = data.groups if data.groups is not None else [str(i) for i in range(len(data))]
    test_keys: set[str] = set()
    for c in np.unique(data.labels):
        members = sorted({keys[i] for i in range(len(data)) if data.labels[i] == c})
        rng.shuffle(members)
        n_test = min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test_keys.update(members[:n_test])
    train = [i for i in range(len(data)) if keys[i] not in test_keys]
    test = [i for i in range(len(data)) if keys[i] in test_keys]
    if not train or not test:
        raise ValueError(f"{data.name}: too few images ({len(data)}) to split into train and test")
    return take(data, train), take(data, test)  # type: ignore[return-value]
