"""Loaders of the classification datasets whose labels sit in a table or an HDF5 file:
PCam (HDF5), SICAPv2 (Excel partitions), Osteo (TCIA CSV), SkinCancer (tiles-v2.csv), MHIST."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from pathmllm.bench.datasets.base import (
    DEFAULT_TEMPLATES,
    IMAGE_SUFFIXES,
    ClassificationSet,
    DatasetInfo,
    DatasetLayoutError,
    H5Image,
    ImageRef,
    SplitNotAvailableError,
    first_existing,
    list_images,
    register_dataset,
    report_missing,
)

log = logging.getLogger(__name__)


def read_csv_rows(path: Path, required: tuple[str, ...], name: str) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetLayoutError(f"{name}: {path} lacks the column(s) {', '.join(missing)} "
                                 f"(has: {', '.join(sorted(header)) or 'no rows'})")
    return rows


def _labelled_set(name: str, images: list[ImageRef], raw: list[str], classes: dict[str, str],
                  split: str | None, where: Path) -> ClassificationSet:
    keys = list(classes)
    absent = [c for c in keys if c not in set(raw)]
    if absent:
        raise DatasetLayoutError(f"{name}: class(es) {', '.join(absent)} have no images in {where}")
    return ClassificationSet(name, images, np.array([keys.index(r) for r in raw]), keys, list(classes.values()),
                             DEFAULT_TEMPLATES, split=split)


# ---- PCam ---------------------------------------------------------------------------------
PCAM_CLASSES = {"normal": "lymph node", "tumor": "lymph node containing metastatic tumor tissue"}
PCAM_SPLITS = ("train", "valid", "test")


def load_pcam(root: Path, split: str | None = None) -> ClassificationSet:
    split = split or "test"
    if split not in PCAM_SPLITS:
        raise ValueError(f"pcam: unknown split {split!r}; use one of {', '.join(PCAM_SPLITS)}")
    import h5py

    folder = root if any(root.glob("camelyonpatch_level_2_split_*")) else (first_existing(root, ("pcam",)) or root)
    x_file = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
    y_file = folder / f"camelyonpatch_level_2_split_{split}_y.h5"
    for f in (x_file, y_file):
        if not f.is_file():
            gz = f.with_name(f.name + ".gz")
            extra = f" ({gz.name} is there: gunzip it first)" if gz.exists() else ""
            error = SplitNotAvailableError if split == "train" and not gz.exists() else DatasetLayoutError
            raise error(f"pcam: expected the file {f.name} in {folder}{extra}")
    with h5py.File(x_file, "r") as fx, h5py.File(y_file, "r") as fy:
        if "x" not in fx or "y" not in fy:
            raise DatasetLayoutError(f"pcam: {x_file.name} must hold the array 'x' and {y_file.name} the array 'y'")
        shape = fx["x"].shape
        y = np.asarray(fy["y"][:]).reshape(len(fy["y"]), -1)[:, 0].astype(np.int64)
    if len(shape) != 4 or shape[-1] != 3 or shape[0] != len(y):
        raise DatasetLayoutError(f"pcam: {x_file.name}['x'] is {shape}; expected (N, 96, 96, 3) with N = {len(y)} labels")
    images: list[ImageRef] = [H5Image(str(x_file), "x", i) for i in range(len(y))]
    return _labelled_set("pcam", images, [list(PCAM_CLASSES)[v] for v in y], PCAM_CLASSES, split, folder)


register_dataset(DatasetInfo(
    "pcam", "classification", load_pcam, folders=("PCam", "pcam", "PatchCamelyon"),
    url="https://zenodo.org/records/2546921 (also github.com/basveeling/pcam)",
    layout="camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5 (gunzipped; 'x' (N,96,96,3) uint8, 'y' (N,1,1,1))",
    reference="Veeling et al. 2018, MICCAI", licence="CC0-1.0", splits=PCAM_SPLITS, class_names=PCAM_CLASSES,
    description="96x96 lymph-node patches, metastasis or not; zero-shot uses the 32768-patch test split"))


# ---- SICAPv2 ------------------------------------------------------------------------------
SICAP_CLASSES = {
    "NC": "benign glands",
    "G3": "Gleason pattern 3, atrophic well differentiated and dense glandular regions",
    "G4": "Gleason pattern 4, cribriform, ill-formed, large-fused and papillary glandular patterns",
    "G5": "Gleason pattern 5, isolated nests of cells without lumen formation",
}


def load_sicapv2(root: Path, split: str | None = None) -> ClassificationSet:
    split = split or "test"
    if split not in ("train", "test"):
        raise ValueError(f"sicapv2: unknown split {split!r}; use train or test")
    table_name = "Train" if split == "train" else "Test"
    part = first_existing(root, ("partition/Test", "SICAPv2/partition/Test"))
    images_dir = first_existing(root, ("images", "SICAPv2/images"))
    if part is None or images_dir is None:
        raise DatasetLayoutError(f"sicapv2: expected the folders images/ and partition/Test/ (with {table_name}.xlsx) in {root}")
    table = first_existing(part, (f"{table_name}.xlsx", f"{table_name}.csv"))
    if table is None:
        error = SplitNotAvailableError if split == "train" else DatasetLayoutError
        raise error(f"sicapv2: expected {part / (table_name + '.xlsx')}")
    if table.suffix == ".xlsx":
        from pathmllm.bench.datasets.xlsx import read_xlsx

        rows = read_xlsx(table)
        if rows and "image_name" not in rows[0]:
            raise DatasetLayoutError(f"sicapv2: {table} has no image_name column")
    else:
        rows = read_csv_rows(table, ("image_name",), "sicapv2")
    missing_cols = [c for c in SICAP_CLASSES if rows and c not in rows[0]]
    if not rows or missing_cols:
        raise DatasetLayoutError(f"sicapv2: {table} needs the columns image_name, {', '.join(SICAP_CLASSES)}")
    images: list[ImageRef] = []
    raw, missing = [], []
    for r in rows:
        p = images_dir / r["image_name"].strip()
        if not p.is_file():
            missing.append(p.name)
            continue
        onehot = [float(r[c] or 0) for c in SICAP_CLASSES]
        images.append(str(p))
        raw.append(list(SICAP_CLASSES)[int(np.argmax(onehot))])
    report_missing("sicapv2", missing, len(rows), images_dir, f"rows of {table.name}")
    return _labelled_set("sicapv2", images, raw, SICAP_CLASSES, split, table)


register_dataset(DatasetInfo(
    "sicapv2", "classification", load_sicapv2, folders=("SICAPv2",),
    url="https://data.mendeley.com/datasets/9xxm58dvs3/1",
    layout="SICAPv2/images/*.jpg and SICAPv2/partition/Test/{Train,Test}.xlsx (image_name, NC, G3, G4, G5 one-hot)",
    reference="Silva-Rodriguez et al. 2020, Computer Methods and Programs in Biomedicine", licence="CC-BY-4.0",
    splits=("train", "test"), class_names=SICAP_CLASSES,
    description="prostate patches: non-cancerous and Gleason 3/4/5"))


# ---- Osteo (TCIA Osteosarcoma-Tumor-Assessment) --------------------------------------------
OSTEO_CLASSES = {"Non-Tumor": "non-tumor tissue", "Viable": "viable tumor", "Non-Viable-Tumor": "necrotic tumor"}
_OSTEO_RAW = {"non-tumor": "Non-Tumor", "viable": "Viable", "viable-tumor": "Viable",
              "non-viable-tumor": "Non-Viable-Tumor", "necrotic": "Non-Viable-Tumor"}


def _osteo_key(name: str) -> str:
    """TCIA image names and file names differ in spaces and dashes ('Case 3 A17-41-11 - 2' vs
    'Case-3-A17-41-11-2.jpg'); compare them without those."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return re.sub(r"[\s\-_]+", "-", stem).strip("-").lower()


def load_osteo(root: Path, split: str | None = None) -> ClassificationSet:
    """The 1144 tiles with the three labels; the 53 'viable: non-viable' (mixed) tiles are left out."""
    table = first_existing(root, ("ML_Features_1144.csv",))
    if table is None:
        found = [p for p in sorted(root.glob("*.csv"))]
        table = found[0] if len(found) == 1 else None
    if table is None:
        raise DatasetLayoutError(f"osteo: expected ML_Features_1144.csv (columns image.name, classification) in {root}, "
                                 "beside the image folders Training-Set-1/ and Training-Set-2/")
    rows = read_csv_rows(table, ("image.name", "classification"), "osteo")
    files = {_osteo_key(p.name): p for p in list_images(root, recursive=True)}
    images: list[ImageRef] = []
    raw, missing, mixed = [], [], 0
    for r in rows:
        label = _OSTEO_RAW.get(r["classification"].strip().lower())
        if label is None:
            if "non-viable" in r["classification"].lower():
                mixed += 1
                continue
            raise DatasetLayoutError(f"osteo: {table.name}: unknown classification {r['classification']!r}")
        p = files.get(_osteo_key(r["image.name"]))
        if p is None:
            missing.append(r["image.name"])
            continue
        images.append(str(p))
        raw.append(label)
    report_missing("osteo", missing, len(rows) - mixed, root, f"rows of {table.name}")
    log.info("osteo: %d tiles (%d mixed 'viable: non-viable' left out)", len(images), mixed)
    return _labelled_set("osteo", images, raw, OSTEO_CLASSES, split, root)


register_dataset(DatasetInfo(
    "osteo", "classification", load_osteo, folders=("Osteo", "Osteosarcoma-UT", "Osteosarcoma-Tumor-Assessment"),
    url="https://doi.org/10.7937/tcia.2019.bvhjhdas (TCIA Osteosarcoma-Tumor-Assessment)",
    layout="ML_Features_1144.csv (image.name, classification) + Training-Set-1/ and Training-Set-2/ (JPEG tiles, any depth)",
    reference="Arunachalam et al. 2019, PLOS ONE 14(4):e0210706", licence="CC-BY-3.0", class_names=OSTEO_CLASSES,
    description="osteosarcoma tiles: non-tumor, viable tumor, necrotic tumor"))


# ---- SkinCancer (Kriegsmann et al., heiDATA) ----------------------------------------------
SKIN_CLASSES = {
    "nontumor_skin_necrosis_necrosis": "necrosis", "nontumor_skin_muscle_skeletal": "skeletal muscle",
    "nontumor_skin_sweatglands_sweatglands": "eccrine sweat glands", "nontumor_skin_vessel_vessel": "vessels",
    "nontumor_skin_elastosis_elastosis": "elastosis", "nontumor_skin_chondraltissue_chondraltissue": "chondral tissue",
    "nontumor_skin_hairfollicle_hairfollicle": "hair follicle", "nontumor_skin_epidermis_epidermis": "epidermis",
    "nontumor_skin_nerves_nerves": "nerves", "nontumor_skin_subcutis_subcutis": "subcutis",
    "nontumor_skin_dermis_dermis": "dermis", "nontumor_skin_sebaceousglands_sebaceousglands": "sebaceous glands",
    "tumor_skin_epithelial_sqcc": "squamous-cell carcinoma", "tumor_skin_melanoma_melanoma": "melanoma in-situ",
    "tumor_skin_epithelial_bcc": "basal-cell carcinoma", "tumor_skin_naevus_naevus": "naevus",
}
_SKIN_SETS = {"train": "Train", "valid": "Validation", "test": "Test"}


def load_skincancer(root: Path, split: str | None = None) -> ClassificationSet:
    split = split or "test"
    if split not in _SKIN_SETS:
        raise ValueError(f"skincancer: unknown split {split!r}; use one of {', '.join(_SKIN_SETS)}")
    table = first_existing(root, ("data/tiles-v2.csv", "tiles-v2.csv"))
    if table is None:
        raise DatasetLayoutError(f"skincancer: expected data/tiles-v2.csv (columns file, class, set) in {root}, "
                                 "beside data/tiles/<class>/")
    rows = [r for r in read_csv_rows(table, ("file", "class", "set"), "skincancer") if r["set"] == _SKIN_SETS[split]]
    if not rows:
        raise SplitNotAvailableError(f"skincancer: {table} has no rows with set = {_SKIN_SETS[split]}")
    unknown = sorted({r["class"] for r in rows} - set(SKIN_CLASSES))
    if unknown:
        raise DatasetLayoutError(f"skincancer: {table.name} has unknown classes {', '.join(unknown[:5])}")
    # 'file' is relative to the folder holding data/ (e.g. data/tiles/<class>/<tile>.jpg)
    bases = [table.parent.parent, table.parent, root]
    base = next((b for b in bases if rows and (b / rows[0]["file"]).is_file()), table.parent.parent)
    images: list[ImageRef] = []
    raw, missing = [], []
    for r in rows:
        p = base / r["file"]
        if not p.is_file():
            missing.append(r["file"])
            continue
        images.append(str(p))
        raw.append(r["class"])
    report_missing("skincancer", missing, len(rows), base, f"{_SKIN_SETS[split]} rows of {table.name}")
    return _labelled_set("skincancer", images, raw, SKIN_CLASSES, split, table)


register_dataset(DatasetInfo(
    "skincancer", "classification", load_skincancer, folders=("SkinCancer", "skin", "Skin"),
    url="https://heidata.uni-heidelberg.de/dataset.xhtml?persistentId=doi:10.11588/data/7QCR8S",
    layout="data/tiles-v2.csv (file, class, set in Train/Validation/Test) + data/tiles/<class>/*.jpg",
    reference="Kriegsmann et al. 2022, Frontiers in Medicine", licence="CC-BY-4.0",
    splits=("train", "valid", "test"), class_names=SKIN_CLASSES, description="16 skin tissue and tumor classes"))


# ---- MHIST (a candidate for the unknown PMEB datasets; not in the suite) ------------------
MHIST_CLASSES = {"HP": "hyperplastic polyp", "SSA": "sessile serrated adenoma"}


def load_mhist(root: Path, split: str | None = None) -> ClassificationSet:
    split = split or "test"
    table, images_dir = root / "annotations.csv", root / "images"
    if not table.is_file() or not images_dir.is_dir():
        raise DatasetLayoutError(f"mhist: expected annotations.csv and images/ in {root}")
    rows = [r for r in read_csv_rows(table, ("Image Name", "Majority Vote Label", "Partition"), "mhist")
            if r["Partition"].strip().lower() == split]
    if not rows:
        raise SplitNotAvailableError(f"mhist: {table} has no rows with Partition = {split}")
    images: list[ImageRef] = []
    raw, missing = [], []
    for r in rows:
        p = images_dir / r["Image Name"].strip()
        if not p.is_file():
            missing.append(p.name)
            continue
        images.append(str(p))
        raw.append(r["Majority Vote Label"].strip())
    report_missing("mhist", missing, len(rows), images_dir, "rows of annotations.csv")
    return _labelled_set("mhist", images, raw, MHIST_CLASSES, split, table)


register_dataset(DatasetInfo(
    "mhist", "classification", load_mhist, folders=("MHIST",), url="https://bmirds.github.io/MHIST/",
    layout="annotations.csv (Image Name, Majority Vote Label, Partition) + images/*.png",
    reference="Wei et al. 2021, AIME", licence="see the data use agreement", splits=("train", "test"),
    class_names=MHIST_CLASSES, description="colorectal polyps HP vs SSA (a candidate for the unknown PMEB datasets)"))
