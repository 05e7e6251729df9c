"""Loaders of the classification datasets whose labels are folder names, a header-less CSV, file
names or palette masks: LC25000, CRC-100K, BACH, WSSS4LUAD.

Each reads the layout its public download unpacks to (``pathmllm bench ls datasets`` and
docs/pmeb.md show them) and finds it at any depth by a marker folder (same-name unzips and
Kaggle copies add levels). Every set records which prompt-name map its readable class names come
from (``prompt_names``).
"""

from __future__ import annotations

import bisect
import csv
import logging
import re
from pathlib import Path

import numpy as np

from pathmllm.bench.datasets.base import (
    DEFAULT_TEMPLATES,
    ClassificationSet,
    DatasetInfo,
    DatasetLayoutError,
    ImageRef,
    SplitNotAvailableError,
    class_folder_set,
    files_by_stem,
    find_dir,
    find_named_dir,
    list_images,
    note,
    register_dataset,
    report_missing,
    require_images,
)

log = logging.getLogger(__name__)

QUILTNET = "QuiltNet (wisdomikezogwo/quilt1m: eval/en_classnames.json)"
PLIP = "PLIP (9 classes, BACK kept, as PLIP and CONCH)"

#: LC25000 prompt names (QuiltNet: eval/en_classnames.json)
LC25000_LUNG = {"lung_aca": "lung adenocarcinoma", "lung_n": "benign lung",
                "lung_scc": "lung squamous cell carcinoma"}
LC25000_COLON = {"colon_aca": "colon adenocarcinoma", "colon_n": "benign colonic tissue"}
#: CRC-100K prompt names (PLIP); 9 classes: QuiltNet drops BACK, CONCH and PLIP keep it
CRC_CLASSES = {"ADI": "adipose tissue", "BACK": "background", "DEB": "debris", "LYM": "lymphocytes",
               "MUC": "mucus", "MUS": "smooth muscle", "NORM": "normal colon mucosa",
               "STR": "cancer-associated stroma", "TUM": "colorectal adenocarcinoma epithelium"}
#: BACH prompt names (QuiltNet); class order as the ground-truth CSV lists them
BACH_CLASSES = {"Normal": "breast normal breast tissue", "Benign": "breast non-malignant benign tissue",
                "InSitu": "breast malignant in-situ carcinoma", "Invasive": "breast malignant invasive carcinoma"}
#: the plainer BACH names also in use (pass as the zero-shot task's ``class_names`` option)
BACH_PLAIN_NAMES = {"Normal": "normal", "Benign": "benign", "InSitu": "in situ carcinoma",
                    "Invasive": "invasive carcinoma"}
#: WSSS4LUAD: the suggested names; PMEB's own are unknown (override with the ``class_names`` option)
WSSS_CLASSES = {"Tumor": "tumor", "Stroma": "stroma", "Normal": "normal"}
WSSS_PROMPTS = "suggested (FORMATS.md 2.1; PMEB's own WSSS4LUAD names are unknown)"


# ---- LC25000 ------------------------------------------------------------------------------
def _norm(label: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(label).lower())


def _lc25000(organ: str, classes: dict[str, str]) -> DatasetInfo:
    name = f"lc25000-{organ}"
    other = LC25000_COLON if organ == "lung" else LC25000_LUNG

    def load(root: Path, split: str | None = None) -> ClassificationSet:
        if split is not None:
            raise SplitNotAvailableError(f"{name}: LC25000 has no native splits (split by group instead)")
        folder = find_dir(root, lambda d: all((d / c).is_dir() for c in classes))
        if folder is not None:
            return class_folder_set(name, folder, classes, DEFAULT_TEMPLATES, prompt_names=QUILTNET,
                                    group_split_required=True)
        from pathmllm.bench.datasets.hf_parquet import find_parquet_splits

        splits = find_parquet_splits(root)
        if splits:
            return _lc25000_parquet(name, [f for fs in splits.values() for f in fs], classes, other)
        raise DatasetLayoutError(
            f"{name}: expected lung_colon_image_set/{organ}_image_sets/{{{','.join(classes)}}}/ (or a flat mirror "
            f"with the class folders {', '.join(classes)}, or the Hugging Face parquet files) under {root}")

    return DatasetInfo(
        name, "classification", load, folders=("LC25000", "lung_colon_image_set", name),
        url="https://github.com/tampapath/lung_colon_image_set (LC25000.zip; also Kaggle "
            "andrewmvd/lung-and-colon-cancer-histopathological-images, HF 1aurent/LC25000)",
        layout=f"lung_colon_image_set/{organ}_image_sets/{{{','.join(classes)}}}/<prefix><N>.jpeg (label = folder; "
               "or a flat LC25000/<class>/ mirror; a groups.csv path,label,group beside the class folders gives the "
               "near-duplicate groups probes need)",
        reference="Borkowski et al. 2019, arXiv:1912.12142", licence="see the GitHub repository",
        class_names=classes, prompt_names=QUILTNET,
        description=f"LC25000 {organ}: {len(classes)} classes, 768x768 JPEG, augmented about 20x from 250 "
                    "originals per class (split by group only)")


def _lc25000_parquet(name: str, files: list[Path], classes: dict[str, str], other: dict[str, str]) -> ClassificationSet:
    """HF ``1aurent/LC25000``: labels (ClassLabel names or strings) matched to the folder names."""
    from pathmllm.bench.datasets.hf_parquet import labelled_rows

    refs, values, names = labelled_rows(files)
    keys = {_norm(c): c for c in classes}
    skip = {_norm(c) for c in other}
    images: list[ImageRef] = []
    labels: list[int] = []
    unknown: set[str] = set()
    for ref, v in zip(refs, values):
        raw = names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else str(v)
        if _norm(raw) in keys:
            images.append(ref)
            labels.append(list(classes).index(keys[_norm(raw)]))
        elif _norm(raw) not in skip:
            unknown.add(raw)
    if unknown:
        raise DatasetLayoutError(f"{name}: {files[0].parent} has labels {', '.join(sorted(unknown))} that are none of "
                                 f"the LC25000 folders {', '.join([*classes, *other])}")
    require_images(name, images, files[0].parent, "parquet rows")
    return ClassificationSet(name, images, np.array(labels), list(classes), list(classes.values()), DEFAULT_TEMPLATES,
                             prompt_names=QUILTNET, group_split_required=True)


register_dataset(_lc25000("lung", LC25000_LUNG))
register_dataset(_lc25000("colon", LC25000_COLON))


# ---- CRC-100K (NCT-CRC-HE-100K / CRC-VAL-HE-7K) -----------------------------------------
CRC_SPLITS = {"train": ("NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM"), "test": ("CRC-VAL-HE-7K",)}


def _crc_folder(root: Path, split: str) -> Path | None:
    for folder_name in CRC_SPLITS[split]:
        found = find_named_dir(root, folder_name, max_depth=3)
        if found is not None and any((found / c).is_dir() for c in CRC_CLASSES):
            return found
    return None


def load_crc(root: Path, split: str | None = None) -> ClassificationSet:
    """``split=None`` evaluates on CRC-VAL-HE-7K when present (as PLIP, QuiltNet and CONCH do),
    else on the folder given."""
    name = "crc-100k"
    if split is not None and split not in CRC_SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; use train or test")
    if any((root / c).is_dir() for c in CRC_CLASSES):
        if split == "train":  # one set of class folders: which split it is is unknown
            raise SplitNotAvailableError(f"{name}: {root} holds one set of class folders, no NCT-CRC-HE-100K train set")
        return class_folder_set(name, root, CRC_CLASSES, DEFAULT_TEMPLATES, split, prompt_names=PLIP)
    for s in ([split] if split else ["test", "train"]):
        folder = _crc_folder(root, s)  # type: ignore[arg-type]
        if folder is not None:
            if split is None and s == "train":
                log.warning("%s: CRC-VAL-HE-7K is not in %s; evaluating on %s", name, root, folder.name)
            return class_folder_set(name, folder, CRC_CLASSES, DEFAULT_TEMPLATES, s, prompt_names=PLIP)
    if split == "train":
        raise SplitNotAvailableError(f"{name}: no {' or '.join(CRC_SPLITS['train'])} folder in {root}")
    flat = [p for p in list_images(root) if p.name.split("-")[0] in CRC_CLASSES]
    if flat and split is None:  # tiles named <CLASS>-<id>.tif in one folder
        images: list[ImageRef] = [str(p) for p in flat]
        labels = [list(CRC_CLASSES).index(p.name.split("-")[0]) for p in flat]
        present = {p.name.split("-")[0] for p in flat}
        absent = [c for c in CRC_CLASSES if c not in present]
        if absent:
            raise DatasetLayoutError(f"{name}: class(es) {', '.join(absent)} have no images in {root}")
        return ClassificationSet(name, images, np.array(labels), list(CRC_CLASSES), list(CRC_CLASSES.values()),
                                 DEFAULT_TEMPLATES, prompt_names=PLIP)
    wanted = ", ".join(CRC_SPLITS[split]) if split else "CRC-VAL-HE-7K or NCT-CRC-HE-100K"
    raise DatasetLayoutError(f"{name}: expected {wanted} (with class folders {', '.join(CRC_CLASSES)}) in {root}")


register_dataset(DatasetInfo(
    "crc-100k", "classification", load_crc, folders=("CRC-100K", "CRC100K", "NCT-CRC", "NCT-CRC-HE"),
    url="https://zenodo.org/records/1214456",
    layout="NCT-CRC-HE-100K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/<CLS>-<8 letters>.tif (train; or "
           "NCT-CRC-HE-100K-NONORM/) and CRC-VAL-HE-7K/<same>/<CLS>-TCGA-<8 letters>.tif (test), each as its zip "
           "unpacks, at any depth (or one such folder; or <CLASS>-<id>.tif tiles in one folder)",
    reference="Kather et al. 2018, Zenodo 10.5281/zenodo.1214456", licence="CC-BY-4.0", splits=("train", "test"),
    class_names=CRC_CLASSES, prompt_names=PLIP,
    description="9 colorectal tissue classes (BACK kept), 224x224 px at 0.5 um/px"))


# ---- BACH ---------------------------------------------------------------------------------
BACH_GT = "microscopy_ground_truth.csv"
BACH_SUFFIXES = (".tif", ".tiff")
_BACH_FILE = re.compile(r"^(b|is|iv|n)(\d{3})\.tiff?$", re.IGNORECASE)
#: eva's patient-aware 268/132 split (kaiko-ai/eva, BACH dataset) as index ranges over the 400
#: photos sorted Benign, InSitu, Invasive, Normal (100 each, by number). Consecutive ranges
#: alternate train/val, so every boundary is a patient boundary: each range is one patient group.
_BACH_BOUNDS = (0, 41, 59, 60, 90, 139, 169, 240, 258, 260, 273, 345, 368, 400)
_BACH_ORDER = ("Benign", "InSitu", "Invasive", "Normal")


def bach_group(file_name: str, cls: str) -> str | None:
    """The patient block (eva's split ranges) of a BACH photo, from its class and number."""
    m = _BACH_FILE.match(file_name)
    if m is None or cls not in _BACH_ORDER:
        return None
    index = _BACH_ORDER.index(cls) * 100 + int(m.group(2)) - 1
    if not 0 <= index < 400:
        return None
    return f"block{bisect.bisect_right(_BACH_BOUNDS, index) - 1:02d}"


def _is_bach_photos(d: Path) -> bool:
    return (d / BACH_GT).is_file() or all((d / c).is_dir() for c in BACH_CLASSES)


def load_bach(root: Path, split: str | None = None) -> ClassificationSet:
    """The 400 labelled photos of part A. Labels come from ``Photos/microscopy_ground_truth.csv``
    (no header: ``<file>,<class>``) and must agree with the class folder; without the CSV, from
    the folders. Groups are eva's patient blocks, so probes split by patient."""
    name = "bach"
    if split is not None:
        raise SplitNotAvailableError(f"{name}: BACH has no official split (probes split by patient block)")
    photos = find_dir(root, _is_bach_photos)
    if photos is None:
        raise DatasetLayoutError(f"{name}: expected the folder Photos (ICIAR2018_BACH_Challenge/Photos) in {root}, "
                                 f"with {BACH_GT} and the class folders {', '.join(BACH_CLASSES)}")
    notes: list[str] = []
    by_class = {c: files_by_stem(photos / c) for c in BACH_CLASSES}
    by_class = {c: {s: p for s, p in files.items() if p.suffix.lower() in BACH_SUFFIXES} for c, files in by_class.items()}
    pairs: list[tuple[Path, str]] = []
    table = photos / BACH_GT
    if table.is_file():
        with table.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]  # header=None: every row is data
        missing, malformed, disagree = [], [], []
        seen: set[Path] = set()
        for n, r in enumerate(rows, 1):
            cells = [c.strip() for c in r if c.strip()]
            if len(cells) != 2 or cells[1] not in BACH_CLASSES:
                malformed.append(f"line {n}: {','.join(r)!r}")
                continue
            file_name, cls = cells
            stem = Path(file_name).stem
            p = by_class[cls].get(stem)
            if p is None:
                elsewhere = [c for c in BACH_CLASSES if stem in by_class[c]]
                if elsewhere:
                    disagree.append(f"{file_name} ({cls} in the CSV, in {elsewhere[0]}/)")
                    seen.add(by_class[elsewhere[0]][stem])
                else:
                    missing.append(file_name)
                continue
            pairs.append((p, cls))
        if malformed:
            note(name, notes, f"{len(malformed)} malformed row(s) of {BACH_GT} skipped (expected '<file>,<class>' "
                              f"with class in {', '.join(BACH_CLASSES)}): {'; '.join(malformed[:3])}")
        if disagree:
            note(name, notes, f"{len(disagree)} image(s) whose CSV class and folder disagree skipped: "
                              f"{', '.join(disagree[:5])}")
        report_missing(name, missing, len(rows), photos, f"rows of {BACH_GT}", notes)
        listed = {p for p, _ in pairs} | seen
        extra = [p.name for files in by_class.values() for p in files.values() if p not in listed]
        if extra:
            note(name, notes, f"{len(extra)} image(s) in the class folders are not in {BACH_GT}; left out: "
                              f"{', '.join(sorted(extra)[:5])}")
    else:
        note(name, notes, f"{BACH_GT} is not in {photos}; labels taken from the class folders")
        pairs = [(p, c) for c in BACH_CLASSES for p in sorted(by_class[c].values())]
    require_images(name, pairs, photos, "labelled photos")
    images: list[ImageRef] = [str(p) for p, _ in pairs]
    labels = [list(BACH_CLASSES).index(c) for _, c in pairs]
    absent = [c for i, c in enumerate(BACH_CLASSES) if i not in set(labels)]
    if absent:
        raise DatasetLayoutError(f"{name}: class(es) {', '.join(absent)} have no images in {photos}")
    groups = [bach_group(p.name, c) or f"file:{p.name}" for p, c in pairs]
    unknown = [p.name for (p, c), g in zip(pairs, groups) if g.startswith("file:")]
    if unknown:
        note(name, notes, f"{len(unknown)} photo(s) not named <b|is|iv|n>NNN.tif have no known patient block; each "
                          f"is its own group: {', '.join(unknown[:5])}")
    return ClassificationSet(name, images, np.array(labels), list(BACH_CLASSES), list(BACH_CLASSES.values()),
                             DEFAULT_TEMPLATES, groups=groups, prompt_names=QUILTNET, group_split_required=True,
                             notes=notes)


register_dataset(DatasetInfo(
    "bach", "classification", load_bach, folders=("BACH", "ICIAR2018_BACH_Challenge"),
    url="https://zenodo.org/records/3632035 (ICIAR2018_BACH_Challenge.zip)",
    layout="ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/{b,is,iv,n}NNN.tif + "
           f"Photos/{BACH_GT} (no header: <file>,<class>), at any depth",
    reference="Aresta et al. 2019, Medical Image Analysis", licence="CC-BY-NC-ND-4.0",
    class_names=BACH_CLASSES, prompt_names=QUILTNET,
    description="400 breast microscopy images (2048x1536 TIFF, 0.42 um/px), 4 classes; split by patient"))


# ---- WSSS4LUAD ----------------------------------------------------------------------------
WSSS_SPLITS = {"train": "1.training", "valid": "2.validation", "test": "3.testing"}
#: mask palette: index 0 tumor, 1 stroma, 2 normal, 3 background
WSSS_PALETTE = ((0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255))


def wsss_name_label(file_name: str) -> list[int] | None:
    """The ``[Tumor, Stroma, Normal]`` multi-hot vector of a training file name: the text between
    ``[`` and ``]`` split on ``", "``; ``None`` for a name without a valid vector."""
    if "[" not in file_name or "]" not in file_name:
        return None
    inner = file_name[file_name.rindex("[") + 1: file_name.rindex("]")]
    parts = inner.split(", ")
    if len(parts) != 3 or any(p not in ("0", "1") for p in parts):
        return None
    return [int(p) for p in parts]


def wsss_mask_labels(path: Path) -> set[int]:
    """The tissue classes (0 tumor, 1 stroma, 2 normal) present in a palette mask; index 3 is
    background. An RGB copy is mapped through the palette colours."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "L", "I"):
            idx = np.asarray(im)
            if im.mode != "P" and idx.size and int(idx.max()) > 3:
                raise ValueError(f"{im.mode} mask with values above 3 (not palette indices)")
            return {int(i) for i in np.unique(idx) if 0 <= i <= 2}
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(rgb, axis=0)}
    return {i for i, c in enumerate(WSSS_PALETTE[:3]) if c in colours}


def load_wsss4luad(root: Path, split: str | None = None) -> ClassificationSet:
    """Patches with exactly one tissue class: ``train`` (default) labels from the file names'
    ``[T, S, N]`` vectors (groups: slides); ``valid`` / ``test`` labels from the palette masks.
    Multi-label patches are left out, and counted."""
    name = "wsss4luad"
    s = split or "train"
    if s not in WSSS_SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; use one of {', '.join(WSSS_SPLITS)}")
    folder = find_named_dir(root, WSSS_SPLITS[s])
    if folder is None:
        error = DatasetLayoutError if s == "train" else SplitNotAvailableError
        raise error(f"{name}: expected the folder {WSSS_SPLITS[s]} in {root}"
                    + (" with PNG patches named like '436219-7159-48057-[1, 0, 0].png' (label vector [Tumor, Stroma, "
                       "Normal])" if s == "train" else " (with img/ and mask/)"))
    notes: list[str] = []
    images: list[ImageRef] = []
    labels: list[int] = []
    groups: list[str] = []
    multi = empty = 0
    if s == "train":
        files = list_images(folder, suffixes=(".png",))
        bad = []
        for p in files:
            vec = wsss_name_label(p.name)
            if vec is None:
                bad.append(p.name)
                continue
            if sum(vec) != 1:
                multi += sum(vec) > 1
                empty += sum(vec) == 0
                continue
            images.append(str(p))
            labels.append(vec.index(1))
            groups.append(p.name.split("-")[0])
        if bad:
            note(name, notes, f"{len(bad)} of {len(files)} PNG(s) in {folder} have no '[T, S, N]' label vector in "
                              f"their name; skipped: {', '.join(bad[:5])}")
        if not images and not files:
            raise DatasetLayoutError(f"{name}: expected the folder 1.training in {root} to hold PNG patches named like "
                                     "'436219-7159-48057-[1, 0, 0].png'; it holds none")
    else:
        img_dir, mask_dir = folder / "img", folder / "mask"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise DatasetLayoutError(f"{name}: expected {folder.name}/img/ and {folder.name}/mask/ in {folder.parent}")
        masks = files_by_stem(mask_dir)
        files = list_images(img_dir, suffixes=(".png",))
        missing, unreadable = [], []
        for p in files:
            m = masks.get(p.stem)
            if m is None:
                missing.append(p.name)
                continue
            try:
                present = wsss_mask_labels(m)
            except (OSError, ValueError) as exc:
                unreadable.append(f"{m.name} ({exc})")
                continue
            if len(present) != 1:
                multi += len(present) > 1
                empty += not present
                continue
            images.append(str(p))
            labels.append(present.pop())
            groups.append(f"{folder.name}/{p.stem}")
        report_missing(name, missing, len(files), mask_dir, f"images of {img_dir}", notes)
        if unreadable:
            note(name, notes, f"{len(unreadable)} mask(s) are not palette masks; skipped: {', '.join(unreadable[:3])}")
    if multi or empty:
        note(name, notes, f"{len(images)} single-label patches kept; {multi} multi-label and {empty} without a tissue "
                          "class left out", logging.INFO)
    require_images(name, images, folder, "single-label patches")
    absent = [c for i, c in enumerate(WSSS_CLASSES) if i not in set(labels)]
    if absent:
        raise DatasetLayoutError(f"{name}: class(es) {', '.join(absent)} have no single-label patches in {folder}")
    return ClassificationSet(name, images, np.array(labels), list(WSSS_CLASSES), list(WSSS_CLASSES.values()),
                             DEFAULT_TEMPLATES, groups=groups, split=s, prompt_names=WSSS_PROMPTS, notes=notes)


register_dataset(DatasetInfo(
    "wsss4luad", "classification", load_wsss4luad, folders=("WSSS4LUAD", "WSSSLUAD"),
    url="https://wsss4luad.grand-challenge.org/",
    layout="1.training/<slide>-<x>-<y>-[T, S, N].png (label vector in the name); "
           "{2.validation,3.testing}/{img,mask,background-mask}/NN.png (palette masks: 0 tumor, 1 stroma, 2 normal, "
           "3 background); same-name nesting accepted; single-label patches are used",
    reference="Han et al. 2022, arXiv:2204.06455", licence="see the challenge", splits=("train", "valid", "test"),
    class_names=WSSS_CLASSES, prompt_names=WSSS_PROMPTS,
    description="lung adenocarcinoma patches: Tumor, Stroma, Normal (default: the training patches)"))
