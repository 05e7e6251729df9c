"""What a benchmark dataset is once loaded, the dataset registry, and shared loader helpers.

Three shapes of data cover PMEB:

- :class:`ClassificationSet`: images with one class each (zero-shot, linear probe, kNN);
- :class:`CaptionSet`: images and captions, any number of captions per image and of images per
  caption (cross-modal retrieval);
- :class:`VQASet`: image + question queries with an answer text, optionally answer options or a
  target image (composed retrieval, multiple choice).

Images are referenced, not loaded: a file path, an :class:`H5Image` (one image inside an HDF5
array, as PCam ships), a :class:`ZipImage` (a member of a zip that was not unpacked) or a
:class:`ParquetImage` (one row of a Hugging Face parquet file). :func:`read_images` turns a chunk
of references into what an embedder takes, so a 300 000-image set never sits in memory at once.

Rules every loader follows (docs/pmeb.md; FORMATS.md section 2.12): the dataset's folder is found
by a marker file or folder at any depth (:func:`find_dir`), labels come from the native source,
extensions match case-insensitively (and by stem where formats mix), absent images are skipped
and reported (:func:`report_missing`, recorded in the set's ``notes``), each set records which
prompt-name map it uses, and sets that must be split by patient or group say so.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import zipfile
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


@dataclass(frozen=True)
class ZipImage:
    """One image file inside a zip archive (read without unpacking it)."""

    path: str
    member: str


@dataclass(frozen=True)
class ParquetImage:
    """One image of a parquet file: row ``row`` of the Hugging Face ``Image`` column ``column``
    (a struct ``{bytes, path}``)."""

    path: str
    column: str
    row: int


ImageRef = Union[str, H5Image, ZipImage, ParquetImage]


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
    prompt_names: str = ""
    """Which prompt-name map ``class_names`` comes from (recorded in zero-shot results)."""
    group_split_required: bool = False
    """The set may only be split by group (patients, near-duplicates): without ``groups`` a
    train/test split is refused rather than leaked."""
    notes: list[str] = field(default_factory=list)
    """What the loader skipped and why (absent images, malformed rows), for the results file."""

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
    notes: list[str] = field(default_factory=list)

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
    notes: list[str] = field(default_factory=list)

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
    prompt_names: str = ""
    """Where ``class_names`` (the prompt-name map) comes from."""
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
JUNK_DIRS = ("__MACOSX",)
"""Folders that zips made on a Mac carry beside the data; never data."""


def is_junk(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files and ``__MACOSX`` folders."""
    return name.startswith(".") or name in JUNK_DIRS


def list_images(folder: Path, recursive: bool = False, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files in ``folder`` (sorted; extensions matched case-insensitively; hidden files,
    ``._*`` files and ``__MACOSX`` skipped)."""
    if not folder.is_dir():
        return []
    if recursive:
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not is_junk(d)]
            out += [Path(dirpath) / f for f in filenames if not is_junk(f) and Path(f).suffix.lower() in suffixes]
        return sorted(out)
    with os.scandir(folder) as it:
        return sorted(Path(e.path) for e in it if not is_junk(e.name) and Path(e.name).suffix.lower() in suffixes
                      and e.is_file())


def subdirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (sorted; hidden and ``__MACOSX`` folders skipped)."""
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if not is_junk(e.name) and e.is_dir())
    except OSError:
        return []


def unnest(folder: Path) -> Path:
    """``X/X/...`` (a same-name unzip, a Kaggle copy) -> the innermost ``X``."""
    while (folder / folder.name).is_dir():
        folder = folder / folder.name
    return folder


def find_dir(root: Path, is_root: Callable[[Path], bool], max_depth: int = 4) -> Path | None:
    """The shallowest folder at or under ``root`` (breadth-first, at most ``max_depth`` levels
    down, junk folders skipped) for which ``is_root`` holds: datasets are found by a marker file
    or folder, not at a fixed depth, because Kaggle copies and same-name unzips add levels."""
    level = [root]
    for depth in range(max_depth + 1):
        for d in level:
            if is_root(d):
                return d
        if depth == max_depth:
            break
        level = [c for d in level for c in subdirs(d)]
        if not level:
            break
    return None


def find_named_dir(root: Path, name: str, max_depth: int = 4) -> Path | None:
    """The shallowest folder named ``name`` at or under ``root``, unnested (``X/X`` -> inner ``X``)."""
    found = find_dir(root, lambda d: d.name == name, max_depth)
    return unnest(found) if found is not None else None


def find_file(root: Path, names: Sequence[str], max_depth: int = 3) -> Path | None:
    """The shallowest file named one of ``names`` (case-insensitively) at or under ``root``."""
    wanted = {n.lower() for n in names}

    def has(d: Path) -> bool:
        return any(f.lower() in wanted for f in _file_names(d))

    d = find_dir(root, has, max_depth)
    if d is None:
        return None
    return next(d / f for f in _file_names(d) if f.lower() in wanted)


def _file_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not is_junk(e.name) and e.is_file())
    except OSError:
        return []


def files_by_stem(folder: Path, recursive: bool = False) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem (``x.jpg`` and ``x.PNG`` both answer ``x``): for
    sets whose tables name images without, or with another, extension."""
    out: dict[str, Path] = {}
    for p in list_images(folder, recursive):
        out.setdefault(p.stem, p)
    return out


def resolve_image(folder: Path, name: str, by_stem: dict[str, Path] | None = None) -> Path | None:
    """``folder/name`` if it exists, else the image with the same stem (any image extension, any
    case) from ``by_stem``."""
    p = folder / name
    if p.is_file():
        return p
    if by_stem is None:
        return None
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return by_stem.get(Path(stem).name)


def class_folder_set(name: str, folder: Path, class_names: dict[str, str], templates: tuple[str, ...],
                     split: str | None = None, groups_csv: bool = True, prompt_names: str = "",
                     group_split_required: bool = False, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> ClassificationSet:
    """A ``<folder>/<class>/<image>`` set with exactly the classes of ``class_names``; every class
    folder must exist and hold images. A ``groups.csv`` (``path,label,group``) beside them is used."""
    missing = [c for c in class_names if not (folder / c).is_dir()]
    if missing:
        found = [p.name for p in subdirs(folder)]
        raise DatasetLayoutError(
            f"{name}: expected one folder per class in {folder}; missing {', '.join(missing)} "
            f"(found: {', '.join(found) or 'no folders'})")
    images: list[ImageRef] = []
    labels: list[int] = []
    for i, cls in enumerate(class_names):
        files = list_images(folder / cls, suffixes=suffixes)
        if not files:
            raise DatasetLayoutError(f"{name}: class {cls!r} has no images: {folder / cls} holds no "
                                     f"{'/'.join(suffixes)} files")
        images += [str(f) for f in files]
        labels += [i] * len(files)
    groups = _read_groups(folder, images) if groups_csv and (folder / "groups.csv").is_file() else None
    return ClassificationSet(name, images, np.array(labels), list(class_names), list(class_names.values()),
                             templates, groups=groups, split=split, prompt_names=prompt_names,
                             group_split_required=group_split_required)


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


def report_missing(name: str, missing: list[str], total: int, where: Path | str, what: str,
                   notes: list[str] | None = None, expected: int | None = None) -> str | None:
    """Warn about listed-but-absent images, which the loader skips (public downloads miss some:
    ARCH books lacks 35, PathMMU's SocialPath images must be fetched). The message is appended to
    ``notes`` and returned; ``expected`` is the number the public download is known to lack."""
    if not missing:
        return None
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    known = ""
    if expected is not None:
        known = (" (the public download lacks exactly this many)" if len(missing) == expected
                 else f" (the public download lacks {expected})")
    message = (f"{name}: {len(missing)} of {total} {what} name images absent from {where}{known}; "
               f"skipped: {shown}")
    log.warning("%s", message)
    if notes is not None:
        notes.append(message)
    return message


def note(name: str, notes: list[str], message: str, level: int = logging.WARNING) -> None:
    """Log ``name: message`` and keep it in the set's ``notes``."""
    log.log(level, "%s: %s", name, message)
    notes.append(f"{name}: {message}")


def require_images(name: str, images: Sequence[Any], where: Path | str, what: str) -> None:
    """Skipping is fine; a set with nothing left is an error that says where it looked."""
    if not images:
        raise DatasetLayoutError(f"{name}: none of the {what} has its image in {where}")


def unpack_dir() -> Path:
    """Where decompressed copies of compressed downloads go (``.h5.gz`` files): under the bench
    cache (``$PATHMLLM_BENCH_CACHE`` or ``~/.cache/pathmllm/bench``)."""
    return Path(os.environ.get("PATHMLLM_BENCH_CACHE", "~/.cache/pathmllm/bench")).expanduser() / "unpacked"


# ---- images and subsets -----------------------------------------------------------------
def ref_path(ref: ImageRef) -> str:
    """The file a reference reads from."""
    return str(ref) if isinstance(ref, str) else ref.path


def ref_id(ref: ImageRef) -> str:
    if isinstance(ref, H5Image):
        return f"{ref.path}::{ref.key}[{ref.index}]"
    if isinstance(ref, ZipImage):
        return f"{ref.path}::{ref.member}"
    if isinstance(ref, ParquetImage):
        return f"{ref.path}::{ref.column}[{ref.row}]"
    return str(ref)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, TIFF ...) -> ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def read_images(refs: Sequence[ImageRef]) -> list[Any]:
    """Paths stay paths (the embedder reads them); HDF5, zip and parquet references become
    ``(H, W, 3)`` uint8 arrays, each file opened once per call."""
    out: list[Any] = list(refs)
    by_file: dict[tuple[type, str, str], list[int]] = {}
    for i, ref in enumerate(refs):
        if isinstance(ref, H5Image):
            by_file.setdefault((H5Image, ref.path, ref.key), []).append(i)
        elif isinstance(ref, ParquetImage):
            by_file.setdefault((ParquetImage, ref.path, ref.column), []).append(i)
        elif isinstance(ref, ZipImage):
            by_file.setdefault((ZipImage, ref.path, ""), []).append(i)
    for (kind, path, key), positions in by_file.items():
        if kind is H5Image:
            import h5py

            with h5py.File(path, "r") as f:
                indices = np.array([refs[i].index for i in positions])  # type: ignore[union-attr]
                order = np.argsort(indices)
                arr = f[key][indices[order]]  # h5py needs increasing indices
                for j, o in enumerate(order):
                    out[positions[o]] = np.ascontiguousarray(arr[j], dtype=np.uint8)
        elif kind is ZipImage:
            with zipfile.ZipFile(path) as z:
                for i in positions:
                    out[i] = decode_image(z.read(refs[i].member))  # type: ignore[union-attr]
        else:
            from pathmllm.bench.datasets.hf_parquet import read_parquet_images

            rows = [refs[i].row for i in positions]  # type: ignore[union-attr]
            for i, arr in zip(positions, read_parquet_images(Path(path), key, rows)):
                out[i] = arr
    return out


def fingerprint_refs(refs: Iterable[ImageRef]) -> str:
    """A hash of image references with each file's size and modification time, so a replaced
    image changes the key."""
    h = hashlib.sha256()
    seen: set[str] = set()
    for ref in refs:
        path = ref_path(ref)
        h.update(ref_id(ref).encode())
        if not isinstance(ref, str):
            if path in seen:
                continue
            seen.add(path)
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
        return replace(data, images=[data.images[i] for i in idx], texts=[data.texts[t] for t in used],
                       positives=[[remap[t] for t in data.positives[i]] for i in idx])

    def pick(xs: list[Any] | None) -> list[Any] | None:
        return [xs[i] for i in idx] if xs is not None else None

    return replace(data, images=pick(data.images), questions=pick(data.questions), answers=pick(data.answers),
                   options=pick(data.options), answer_index=pick(data.answer_index), targets=pick(data.targets))


class GroupsRequiredError(ValueError):
    """A set that may only be split by patient or group has no groups."""


def split_train_test(data: ClassificationSet, test_fraction: float = 0.3,
                     seed: int = 0) -> tuple[ClassificationSet, ClassificationSet]:
    """Stratified train/test split; by group when the set has groups (no group in both parts).
    A set marked ``group_split_required`` (LC25000, BACH, Osteo) without groups is refused."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if data.groups is None and data.group_split_required:
        raise GroupsRequiredError(
            f"{data.name}: must be split by patient or near-duplicate group, and no groups are known for these "
            "images; put a groups.csv (path,label,group; paths relative to the class folders' parent) beside the "
            "class folders")
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
        raise ValueError(f"{data.name}: too few images ({len(data)}) or groups to split into train and test")
    return take(data, train), take(data, test)  # type: ignore[return-value]
