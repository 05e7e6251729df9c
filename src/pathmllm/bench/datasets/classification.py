"""Loaders of the classification datasets whose labels are folder or file names.

Each reads the layout its public download unpacks to (``pathmllm bench ls`` and docs/pmeb.md
show them) and accepts the folder at a few depths (the archive's top folder or the one inside).
"""

from __future__ import annotations

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
    first_existing,
    list_images,
    register_dataset,
)

log = logging.getLogger(__name__)

LC25000_LUNG = {"lung_aca": "lung adenocarcinoma", "lung_n": "benign lung tissue",
                "lung_scc": "lung squamous cell carcinoma"}
LC25000_COLON = {"colon_aca": "colon adenocarcinoma", "colon_n": "benign colonic tissue"}
CRC_CLASSES = {"ADI": "adipose tissue", "BACK": "background", "DEB": "debris", "LYM": "lymphocytes",
               "MUC": "mucus", "MUS": "smooth muscle", "NORM": "normal colon mucosa",
               "STR": "cancer-associated stroma", "TUM": "colorectal adenocarcinoma epithelium"}
BACH_CLASSES = {"Normal": "normal breast tissue", "Benign": "benign breast lesion",
                "InSitu": "breast carcinoma in situ", "Invasive": "invasive breast carcinoma"}
WSSS_CLASSES = {"tumor": "tumor epithelial tissue", "stroma": "tumor-associated stroma",
                "normal": "normal lung tissue"}


def _lc25000(organ: str, classes: dict[str, str]) -> DatasetInfo:
    def load(root: Path, split: str | None = None) -> ClassificationSet:
        sub = f"{organ}_image_sets"
        folder = root
        if not all((root / c).is_dir() for c in classes):
            folder = first_existing(root, (sub, f"lung_colon_image_set/{sub}")) or root
        return class_folder_set(f"lc25000-{organ}", folder, classes, DEFAULT_TEMPLATES, split)

    return DatasetInfo(
        f"lc25000-{organ}", "classification", load, folders=("LC25000", "lung_colon_image_set", f"lc25000-{organ}"),
        url="https://github.com/tampapath/lung_colon_image_set (also on Kaggle: andrewmvd/lung-and-colon-cancer-histopathological-images)",
        layout=f"lung_colon_image_set/{organ}_image_sets/{{{','.join(classes)}}}/*.jpeg "
               "(a folder holding the class folders directly works too; a groups.csv path,label,group beside them is used)",
        reference="Borkowski et al. 2019, arXiv:1912.12142", licence="see the GitHub repository",
        class_names=classes, description=f"LC25000 {organ}: {len(classes)} classes, 768x768 JPEG, "
                                         "augmented about 20x from 250 originals per class")


register_dataset(_lc25000("lung", LC25000_LUNG))
register_dataset(_lc25000("colon", LC25000_COLON))


# ---- CRC-100K (NCT-CRC-HE-100K / CRC-VAL-HE-7K) -----------------------------------------
CRC_SPLITS = {"train": ("NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM"), "test": ("CRC-VAL-HE-7K",)}


def load_crc(root: Path, split: str | None = None) -> ClassificationSet:
    """``split=None`` evaluates on CRC-VAL-HE-7K when present (as PLIP, QuiltNet and CONCH do),
    else on the folder given."""
    name = "crc-100k"
    if split is not None and split not in CRC_SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; use train or test")
    if any((root / c).is_dir() for c in CRC_CLASSES):
        if split == "train":  # one set of class folders: which split it is is unknown
            raise SplitNotAvailableError(f"{name}: {root} holds one set of class folders, no NCT-CRC-HE-100K train set")
        return class_folder_set(name, root, CRC_CLASSES, DEFAULT_TEMPLATES, split)
    for s in ([split] if split else ["test", "train"]):
        folder = first_existing(root, CRC_SPLITS[s])  # type: ignore[index]
        if folder is not None:
            if split is None and s == "train":
                log.warning("%s: CRC-VAL-HE-7K is not in %s; evaluating on %s", name, root, folder.name)
            return class_folder_set(name, folder, CRC_CLASSES, DEFAULT_TEMPLATES, s)
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
                                 DEFAULT_TEMPLATES)
    wanted = ", ".join(CRC_SPLITS[split]) if split else "CRC-VAL-HE-7K or NCT-CRC-HE-100K"
    raise DatasetLayoutError(f"{name}: expected {wanted} (with class folders {', '.join(CRC_CLASSES)}) in {root}")


register_dataset(DatasetInfo(
    "crc-100k", "classification", load_crc, folders=("CRC-100K", "CRC100K", "NCT-CRC", "NCT-CRC-HE"),
    url="https://zenodo.org/records/1214456",
    layout="NCT-CRC-HE-100K/{ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM}/*.tif and CRC-VAL-HE-7K/<same>/*.tif "
           "(or one of those folders; or tiles named <CLASS>-<id>.tif in one folder)",
    reference="Kather et al. 2018, Zenodo 10.5281/zenodo.1214456", licence="CC-BY-4.0", splits=("train", "test"),
    class_names=CRC_CLASSES, description="9 colorectal tissue classes, 224x224 px at 0.5 um/px"))


# ---- BACH ---------------------------------------------------------------------------------
def load_bach(root: Path, split: str | None = None) -> ClassificationSet:
    if all((root / c).is_dir() for c in BACH_CLASSES):
        folder = root
    else:
        folder = first_existing(root, ("Photos", "ICIAR2018_BACH_Challenge/Photos", "ICAR2018_BACH_Challenge/Photos"))
        if folder is None:
            raise DatasetLayoutError(f"bach: expected the folder Photos (ICIAR2018_BACH_Challenge/Photos) in {root}, "
                                     f"with class folders {', '.join(BACH_CLASSES)}")
    return class_folder_set("bach", folder, BACH_CLASSES, DEFAULT_TEMPLATES, split)


register_dataset(DatasetInfo(
    "bach", "classification", load_bach, folders=("BACH", "ICIAR2018_BACH_Challenge"),
    url="https://zenodo.org/records/3632035 (ICIAR2018_BACH_Challenge.zip)",
    layout="ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/*.tif",
    reference="Aresta et al. 2019, Medical Image Analysis", licence="CC-BY-NC-ND-4.0",
    class_names=BACH_CLASSES, description="400 breast microscopy images (2048x1536), 4 classes"))


# ---- WSSS4LUAD ----------------------------------------------------------------------------
_WSSS_LABEL = re.compile(r"\[(\d)\s*,\s*(\d)\s*,\s*(\d)\]")


def load_wsss4luad(root: Path, split: str | None = None) -> ClassificationSet:
    """The training patches with exactly one tissue label (the ``[tumor, stroma, normal]`` vector
    in the file name has one 1); multi-label patches are left out."""
    folder = first_existing(root, ("1.training", "training")) or root
    files = list_images(folder)
    labelled = [(p, _WSSS_LABEL.search(p.name)) for p in files]
    matched = [(p, m) for p, m in labelled if m is not None]
    if not matched:
        raise DatasetLayoutError(
            f"wsss4luad: expected the folder 1.training in {root}, with PNG patches named like "
            "'436219-7159-48057-[1, 0, 0].png' (label vector [tumor, stroma, normal]); found "
            f"{len(files)} image(s) without such a name")
    images: list[ImageRef] = []
    labels, groups = [], []
    multi = 0
    for p, m in matched:
        vec = [int(v) for v in m.groups()]  # type: ignore[union-attr]
        if sum(vec) != 1:
            multi += 1
            continue
        images.append(str(p))
        labels.append(vec.index(1))
        groups.append(p.name.split("-")[0])
    log.info("wsss4luad: %d single-label patches (%d multi-label left out)", len(images), multi)
    present = set(labels)
    absent = [c for i, c in enumerate(WSSS_CLASSES) if i not in present]
    if absent:
        raise DatasetLayoutError(f"wsss4luad: class(es) {', '.join(absent)} have no single-label patches in {folder}")
    return ClassificationSet("wsss4luad", images, np.array(labels), list(WSSS_CLASSES), list(WSSS_CLASSES.values()),
                             DEFAULT_TEMPLATES, groups=groups, split=split)


register_dataset(DatasetInfo(
    "wsss4luad", "classification", load_wsss4luad, folders=("WSSS4LUAD", "WSSSLUAD"),
    url="https://wsss4luad.grand-challenge.org/",
    layout="1.training/<slide>-<x>-<y>-[t, s, n].png (label vector in the name; single-label patches are used)",
    reference="Han et al. 2022, arXiv:2204.06455", licence="see the challenge",
    class_names=WSSS_CLASSES, description="lung adenocarcinoma patches: tumor, stroma, normal"))
