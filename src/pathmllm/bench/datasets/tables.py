"""Loaders of the classification datasets whose labels sit in a table or an HDF5 file:
PCam (HDF5 or HF parquet), SICAPv2 (Excel partitions), Osteo (TCIA CSV), SkinCancer
(tiles-v2.csv), MHIST."""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from pathmllm.bench.datasets.base import (
    DEFAULT_TEMPLATES,
    ClassificationSet,
    DatasetInfo,
    DatasetLayoutError,
    H5Image,
    ImageRef,
    SplitNotAvailableError,
    files_by_stem,
    find_dir,
    find_file,
    find_named_dir,
    note,
    register_dataset,
    report_missing,
    require_images,
    resolve_image,
    unpack_dir,
)
from pathmllm.utils.atomic import atomic_path

log = logging.getLogger(__name__)

QUILTNET = "QuiltNet (wisdomikezogwo/quilt1m: eval/en_classnames.json)"


def read_csv_rows(path: Path, required: tuple[str, ...], name: str) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetLayoutError(f"{name}: {path} lacks the column(s) {', '.join(missing)} "
                                 f"(has: {', '.join(sorted(h for h in header if h)) or 'no rows'})")
    return rows


def _labelled_set(name: str, images: list[ImageRef], raw: list[str], classes: dict[str, str],
                  split: str | None, where: Path, **kwargs: object) -> ClassificationSet:
    keys = list(classes)
    absent = [c for c in keys if c not in set(raw)]
    if absent:
        raise DatasetLayoutError(f"{name}: class(es) {', '.join(absent)} have no images in {where}")
    return ClassificationSet(name, images, np.array([keys.index(r) for r in raw]), keys, list(classes.values()),
                             DEFAULT_TEMPLATES, split=split, **kwargs)  # type: ignore[arg-type]


# ---- PCam ---------------------------------------------------------------------------------
#: raw labels are y = 0 / 1 (the centre 32x32 px hold tumour); prompt names from QuiltNet
PCAM_CLASSES = {"0": "lymph node", "1": "lymph node containing metastatic tumor tissue"}
PCAM_SPLITS = ("train", "valid", "test")
_PCAM_PREFIX = "camelyonpatch_level_2_split_"
#: Hugging Face split names of the parquet copies (1aurent/PatchCamelyon; dpdl-benchmark/patch_camelyon)
_PCAM_HF_SPLITS = {"train": ("train",), "valid": ("valid", "validation"), "test": ("test",)}


def gunzipped(gz: Path) -> Path:
    """A decompressed copy of ``gz`` in the bench cache (made once, keyed by the file's path, size
    and time): h5py cannot read ``.h5.gz`` directly, and the data folder stays untouched."""
    st = gz.stat()
    key = hashlib.sha256(f"{gz.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = unpack_dir() / "pcam" / key / gz.name[: -len(".gz")]
    if not out.is_file():
        log.warning("pcam: decompressing %s to %s (once)", gz, out)
        with atomic_path(out) as tmp, gzip.open(gz, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    return out


def _pcam_file(folder: Path, split: str, part: str) -> Path | None:
    """``..._<split>_<part>.h5``, or its ``.h5.gz`` as downloaded (decompressed into the cache)."""
    h5 = folder / f"{_PCAM_PREFIX}{split}_{part}.h5"
    if h5.is_file():
        return h5
    gz = h5.with_name(h5.name + ".gz")
    return gunzipped(gz) if gz.is_file() else None


def _pcam_label(value: object, names: list[str] | None) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and names is not None and 0 <= int(value) < len(names):
        value = names[int(value)]
    text = str(value).strip().lower()
    mapped = {"0": 0, "1": 1, "false": 0, "true": 1}.get(text)
    if mapped is None:
        raise DatasetLayoutError(f"pcam: label {value!r} is not 0/1 (or False/True)")
    return mapped


def load_pcam(root: Path, split: str | None = None) -> ClassificationSet:
    """``split=None`` is the 32 768-patch test split. Reads the HDF5 files (``.h5`` or
    ``.h5.gz``), or a Hugging Face parquet copy."""
    split = split or "test"
    if split not in PCAM_SPLITS:
        raise ValueError(f"pcam: unknown split {split!r}; use one of {', '.join(PCAM_SPLITS)}")
    folder = find_dir(root, lambda d: any(d.glob(f"{_PCAM_PREFIX}*")))
    if folder is None:
        from pathmllm.bench.datasets.hf_parquet import find_parquet_splits

        hf = find_parquet_splits(root)
        if hf:
            return _pcam_parquet(hf, split, root)
        folder = root
    x_file, y_file = _pcam_file(folder, split, "x"), _pcam_file(folder, split, "y")
    for f, part in ((x_file, "x"), (y_file, "y")):
        if f is None:
            error = SplitNotAvailableError if split != "test" else DatasetLayoutError
            raise error(f"pcam: expected the file {_PCAM_PREFIX}{split}_{part}.h5 (or .h5.gz) in {folder}")
    import h5py

    with h5py.File(x_file, "r") as fx, h5py.File(y_file, "r") as fy:
        if "x" not in fx or "y" not in fy:
            raise DatasetLayoutError(f"pcam: {x_file.name} must hold the array 'x' and {y_file.name} the array 'y'")  # type: ignore[union-attr]
        shape = fx["x"].shape
        y_raw = np.asarray(fy["y"][:])
    y = (y_raw[:, 0, 0, 0] if y_raw.ndim == 4 else y_raw.reshape(len(y_raw), -1)[:, 0]).astype(np.int64)
    if len(shape) != 4 or shape[-1] != 3 or shape[0] != len(y):
        raise DatasetLayoutError(f"pcam: {x_file.name}['x'] is {shape}; expected (N, 96, 96, 3) with N = {len(y)} labels")  # type: ignore[union-attr]
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise DatasetLayoutError(f"pcam: {y_file.name}['y'] holds values other than 0 and 1")  # type: ignore[union-attr]
    notes: list[str] = []
    images: list[ImageRef] = [H5Image(str(x_file), "x", i) for i in range(len(y))]
    return _labelled_set("pcam", images, [str(v) for v in y], PCAM_CLASSES, split, folder,
                         groups=_pcam_groups(folder, split, len(y), notes), prompt_names=QUILTNET, notes=notes)


def _pcam_groups(folder: Path, split: str, n: int, notes: list[str]) -> list[str] | None:
    """The source slide (``wsi``) of each patch from ``..._<split>_meta.csv``, when present."""
    meta = folder / f"{_PCAM_PREFIX}{split}_meta.csv"
    if not meta.is_file():
        return None
    rows = read_csv_rows(meta, ("wsi",), "pcam")
    if len(rows) != n:
        note("pcam", notes, f"{meta.name} has {len(rows)} rows for {n} patches; slide groups not used")
        return None
    return [r["wsi"] for r in rows]


def _pcam_parquet(hf: dict[str, list[Path]], split: str, root: Path) -> ClassificationSet:
    from pathmllm.bench.datasets.hf_parquet import labelled_rows

    files = next((hf[s] for s in _PCAM_HF_SPLITS[split] if s in hf), None)
    if files is None:
        error = SplitNotAvailableError if split != "test" else DatasetLayoutError
        raise error(f"pcam: the parquet files under {root} have no {split!r} split (have: {', '.join(sorted(hf))})")
    refs, values, names = labelled_rows(files)
    raw = [str(_pcam_label(v, names)) for v in values]
    return _labelled_set("pcam", list(refs), raw, PCAM_CLASSES, split, files[0].parent, prompt_names=QUILTNET)


register_dataset(DatasetInfo(
    "pcam", "classification", load_pcam, folders=("PCam", "pcam", "PatchCamelyon"),
    url="https://zenodo.org/records/2546921 (also github.com/basveeling/pcam)",
    layout="camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5.gz as downloaded, or .h5 gunzipped ('x' (N,96,96,3) "
           "uint8, 'y' (N,1,1,1), label y[i,0,0,0]; _meta.csv wsi = slide groups); or the HF parquet copies",
    reference="Veeling et al. 2018, MICCAI", licence="CC0-1.0", splits=PCAM_SPLITS, class_names=PCAM_CLASSES,
    prompt_names=QUILTNET,
    description="96x96 lymph-node patches, centre 32x32 px tumour or not; zero-shot uses the 32768-patch test split"))


# ---- SICAPv2 ------------------------------------------------------------------------------
#: prompt names: QuiltNet's ``sicap`` list (NC, G3, G4, G5), not its SicapDataset's longer one
SICAP_CLASSES = {
    "NC": "benign glands",
    "G3": "atrophic dense glands",
    "G4": "cribriform ill-formed fused papillary patterns",
    "G5": "isolated nest cells without lumen roseting patterns",
}
SICAP_PROMPTS = "QuiltNet (sicap: NC/G3/G4/G5)"


def sicap_mask(masks_dir: Path, image_name: str) -> Path | None:
    """The mask of a SICAPv2 patch: sources disagree between ``<image name>.jpg`` and
    ``<stem>.png``, so both are probed (extensions case-insensitively)."""
    stem = image_name[:-4] if image_name.lower().endswith(".jpg") else image_name
    by_lower = {p.name.lower(): p for p in masks_dir.iterdir()} if masks_dir.is_dir() else {}
    for candidate in (f"{stem}.jpg", f"{stem}.png", f"{stem}.jpeg"):
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    return None


def _sicap_patients(root: Path, notes: list[str]) -> dict[str, str]:
    """slide_id -> patient_id from ``wsi_labels.xlsx`` (empty when absent)."""
    table = root / "wsi_labels.xlsx"
    if not table.is_file():
        return {}
    from pathmllm.bench.datasets.xlsx import read_xlsx

    rows = read_xlsx(table)
    if not rows or not {"slide_id", "patient_id"} <= set(rows[0]):
        note("sicapv2", notes, f"{table.name} lacks slide_id/patient_id; grouping by slide")
        return {}
    return {r["slide_id"].strip(): r["patient_id"].strip() for r in rows if r.get("slide_id", "").strip()}


def load_sicapv2(root: Path, split: str | None = None) -> ClassificationSet:
    """``partition/Test/{Train,Test}.xlsx`` (the usual evaluation split): the label is the argmax
    of the one-hot NC/G3/G4/G5 columns; groups are patients (``wsi_labels.xlsx``) or slides."""
    name = "sicapv2"
    split = split or "test"
    if split not in ("train", "test"):
        raise ValueError(f"{name}: unknown split {split!r}; use train or test")
    table_name = "Train" if split == "train" else "Test"
    base = find_dir(root, lambda d: (d / "partition").is_dir() and (d / "images").is_dir())
    if base is None:
        raise DatasetLayoutError(f"{name}: expected the folders images/ and partition/Test/ (with {table_name}.xlsx) "
                                 f"in {root}")
    images_dir, table = base / "images", base / "partition" / "Test" / f"{table_name}.xlsx"
    if not table.is_file():
        error = SplitNotAvailableError if split == "train" else DatasetLayoutError
        raise error(f"{name}: expected {table}")
    from pathmllm.bench.datasets.xlsx import read_xlsx

    rows = read_xlsx(table)
    missing_cols = [c for c in ("image_name", *SICAP_CLASSES) if rows and c not in rows[0]]
    if not rows or missing_cols:
        raise DatasetLayoutError(f"{name}: {table} needs the columns image_name, {', '.join(SICAP_CLASSES)} "
                                 f"(lacks {', '.join(missing_cols) or 'rows'})")
    notes: list[str] = []
    by_stem = files_by_stem(images_dir)
    patients = _sicap_patients(base, notes)
    images: list[ImageRef] = []
    raw, groups, missing, malformed = [], [], [], []
    for n, r in enumerate(rows, 2):
        image_name = r["image_name"].strip()
        try:
            onehot = [float(r[c] or 0) for c in SICAP_CLASSES]
        except ValueError:
            onehot = []
        if not image_name or not onehot or max(onehot) <= 0:
            malformed.append(f"row {n} ({image_name or 'no image_name'})")
            continue
        p = resolve_image(images_dir, image_name, by_stem)  # image_name may or may not end in .jpg
        if p is None:
            missing.append(image_name)
            continue
        images.append(str(p))
        raw.append(list(SICAP_CLASSES)[int(np.argmax(onehot))])
        slide = p.stem.split("_Block_Region_")[0] if "_Block_Region_" in p.stem else p.stem.split("_")[0]
        groups.append(patients.get(slide, slide))
    if malformed:
        note(name, notes, f"{len(malformed)} row(s) of {table.name} without an image name or a one-hot class skipped: "
                          f"{', '.join(malformed[:5])}")
    report_missing(name, missing, len(rows), images_dir, f"rows of {table.name}", notes)
    require_images(name, images, images_dir, f"rows of {table.name}")
    return _labelled_set(name, images, raw, SICAP_CLASSES, split, table, groups=groups, prompt_names=SICAP_PROMPTS,
                         notes=notes)


register_dataset(DatasetInfo(
    "sicapv2", "classification", load_sicapv2, folders=("SICAPv2",),
    url="https://data.mendeley.com/datasets/9xxm58dvs3/1",
    layout="SICAPv2/images/<slide>_Block_Region_<r>_<i>_<j>_xini_<x>_yini_<y>.jpg, SICAPv2/partition/Test/"
           "{Train,Test}.xlsx (image_name, NC, G3, G4, G5 one-hot, G4C), SICAPv2/wsi_labels.xlsx (patients), masks/",
    reference="Silva-Rodriguez et al. 2020, Computer Methods and Programs in Biomedicine", licence="CC-BY-4.0",
    splits=("train", "test"), class_names=SICAP_CLASSES, prompt_names=SICAP_PROMPTS,
    description="prostate patches (512x512, 10x): non-cancerous and Gleason 3/4/5"))


# ---- Osteo (TCIA Osteosarcoma-Tumor-Assessment) --------------------------------------------
#: raw labels of ML_Features_1144.csv -> prompt names (QuiltNet)
OSTEO_CLASSES = {"Non-Tumor": "non-tumor", "Non-Viable-Tumor": "non-viable necrotic osteosarcoma tumor",
                 "Viable": "viable osteosarcoma tumor"}
OSTEO_MIXED = "viable: non-viable"
OSTEO_CSV = "ML_Features_1144.csv"
OSTEO_CSV_BYTES = 880_995
_OSTEO_GROUP = re.compile(r"^\s*(Case\s+\d+|P\d+)\b")


def osteo_file_stem(image_name: str) -> str:
    """TCIA ``image.name`` -> file stem: ``" - "`` -> ``"-"``, then ``" "`` -> ``"-"`` (QuiltNet's
    OsteoDataset); the file is ``<stem>.jpg`` (PathDB serves ``.tiff``)."""
    return image_name.strip().replace(" - ", "-").replace(" ", "-")


def osteo_group(image_name: str) -> str | None:
    """The patient token of an image name: ``Case <n>`` or, without one, ``P<m>``."""
    m = _OSTEO_GROUP.match(image_name)
    return " ".join(m.group(1).split()) if m else None


def _check_osteo_csv(table: Path) -> list[str]:
    """The header of TCIA's file, or a clear error for the edited GitHub copy or a wrong size."""
    with table.open("rb") as f:
        first = f.readline()
    header = next(csv.reader([first.decode("utf-8-sig", "replace")]))
    if "image.name" not in header and "image_name" in header:
        raise DatasetLayoutError(
            f"osteo: {table} starts with {','.join(header[:2])!r}: it is the edited GitHub copy (CRLF, empty trailing "
            "columns, necrosis merged into Non-Tumor), not TCIA's file. Download ML_Features_1144.csv "
            f"({OSTEO_CSV_BYTES:,} bytes) from TCIA (doi:10.7937/tcia.2019.bvhjhdas)")
    missing = [c for c in ("image.name", "classification") if c not in header]
    if missing:
        raise DatasetLayoutError(f"osteo: {table} lacks the column(s) {', '.join(missing)} "
                                 f"(has: {', '.join(h for h in header if h) or 'nothing'})")
    size = table.stat().st_size
    if size != OSTEO_CSV_BYTES:
        raise DatasetLayoutError(
            f"osteo: {table} is {size:,} bytes, not the {OSTEO_CSV_BYTES:,} of TCIA's {OSTEO_CSV}; an edited copy "
            "gives wrong labels. Download it from TCIA (doi:10.7937/tcia.2019.bvhjhdas)")
    return header


def load_osteo(root: Path, split: str | None = None, mixed: str = "drop") -> ClassificationSet:
    """The TCIA tiles with the labels of ``ML_Features_1144.csv`` (checked by its size). The 53
    ``viable: non-viable`` tiles are dropped (``mixed="drop"``, as QuiltNet) or counted as Viable
    (``mixed="viable"``, as other loaders). Groups are the 4 patient tokens of the image names."""
    name = "osteo"
    if split is not None:
        raise SplitNotAvailableError(f"{name}: Training-Set-1/2 are not splits; split by patient")
    if mixed not in ("drop", "viable"):
        raise ValueError(f"{name}: mixed must be 'drop' or 'viable', got {mixed!r}")
    table = find_file(root, (OSTEO_CSV,), max_depth=2)
    if table is None:
        raise DatasetLayoutError(f"{name}: expected {OSTEO_CSV} (TCIA's separate download; columns image.name, "
                                 f"classification) in {root}, beside the image folders Training-Set-1/ and Training-Set-2/")
    _check_osteo_csv(table)
    rows = read_csv_rows(table, ("image.name", "classification"), name)
    sets = [d for d in (find_named_dir(root, f"Training-Set-{k}") for k in (1, 2)) if d is not None]
    if not sets:
        raise DatasetLayoutError(f"{name}: expected the image folders Training-Set-1/ and Training-Set-2/ in {root}")
    files: dict[str, Path] = {}
    for d in sets:
        for stem, p in files_by_stem(d, recursive=True).items():
            files.setdefault(stem, p)
    notes: list[str] = []
    images: list[ImageRef] = []
    raw, groups, missing, unknown = [], [], [], []
    dropped = 0
    for r in rows:
        label = r["classification"].strip()
        if label == OSTEO_MIXED:
            if mixed == "drop":
                dropped += 1
                continue
            label = "Viable"
        if label not in OSTEO_CLASSES:
            unknown.append(f"{r['image.name']!r}: {label!r}")
            continue
        p = files.get(osteo_file_stem(r["image.name"]))
        if p is None:
            missing.append(r["image.name"])
            continue
        images.append(str(p))
        raw.append(label)
        groups.append(osteo_group(r["image.name"]) or f"image:{r['image.name']}")
    if unknown:
        note(name, notes, f"{len(unknown)} row(s) with a label other than {', '.join(OSTEO_CLASSES)} or "
                          f"{OSTEO_MIXED!r} skipped: {'; '.join(unknown[:3])}")
    if dropped:
        note(name, notes, f"{dropped} {OSTEO_MIXED!r} tiles left out (as QuiltNet)", logging.INFO)
    report_missing(name, missing, len(rows) - dropped, ", ".join(str(d) for d in sets), f"rows of {OSTEO_CSV}", notes)
    require_images(name, images, root, f"rows of {OSTEO_CSV}")
    return _labelled_set(name, images, raw, OSTEO_CLASSES, None, root, groups=groups, prompt_names=QUILTNET,
                         group_split_required=True, notes=notes)


register_dataset(DatasetInfo(
    "osteo", "classification", load_osteo, folders=("Osteo", "Osteosarcoma-UT", "Osteosarcoma-Tumor-Assessment"),
    url="https://doi.org/10.7937/tcia.2019.bvhjhdas (TCIA Osteosarcoma-Tumor-Assessment; the CSV is a separate download)",
    layout=f"{OSTEO_CSV} ({OSTEO_CSV_BYTES:,} bytes; image.name, classification, 67 features) + "
           "Training-Set-{1,2}/set<k>/<image.name with ' - ' and ' ' -> '-'>.jpg (or .tiff)",
    reference="Arunachalam et al. 2019, PLOS ONE 14(4):e0210706", licence="CC-BY-3.0", class_names=OSTEO_CLASSES,
    prompt_names=QUILTNET,
    description="osteosarcoma tiles (1024x1024, 10x): non-tumor, non-viable (necrotic), viable tumor; split by patient"))


# ---- SkinCancer (Kriegsmann et al., heiDATA) ----------------------------------------------
#: folder (= ``class``) -> prompt name (FORMATS.md 2.8; MUSK feeds the raw folder strings instead)
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
SKIN_TUMOR_CLASSES = {k: v for k, v in SKIN_CLASSES.items() if k.startswith("tumor_")}
SKIN_PROMPTS = "mapped folder names (FORMATS.md 2.8)"
_SKIN_SETS = {"train": "Train", "valid": "Validation", "test": "Test"}


def _skin_table(root: Path) -> Path | None:
    base = find_dir(root, lambda d: (d / "data" / "tiles-v2.csv").is_file()
                    or (d.name == "data" and (d / "tiles-v2.csv").is_file()))
    if base is None:
        return None
    return base / "tiles-v2.csv" if base.name == "data" and (base / "tiles-v2.csv").is_file() else base / "data" / "tiles-v2.csv"


def _skin_loader(name: str, classes: dict[str, str], tumor_only: bool):  # noqa: ANN202
    def load(root: Path, split: str | None = None) -> ClassificationSet:
        split = split or "test"
        if split not in _SKIN_SETS:
            raise ValueError(f"{name}: unknown split {split!r}; use one of {', '.join(_SKIN_SETS)}")
        table = _skin_table(root)
        if table is None:
            raise DatasetLayoutError(f"{name}: expected data/tiles-v2.csv (columns file, class, malignicy, case, set) "
                                     f"in {root}, beside data/tiles/<class>/")
        required = ("file", "class", "set") + (("malignicy",) if tumor_only else ())
        rows = read_csv_rows(table, required, name)
        rows = [r for r in rows if r["set"].strip() == _SKIN_SETS[split]]
        if tumor_only:
            rows = [r for r in rows if r["malignicy"].strip() == "tumor"]
        if not rows:
            raise SplitNotAvailableError(f"{name}: {table} has no rows with set = {_SKIN_SETS[split]}"
                                         + (" and malignicy = tumor" if tumor_only else ""))
        unknown = sorted({r["class"].strip() for r in rows} - set(classes))
        if unknown:
            raise DatasetLayoutError(f"{name}: {table.name} has unknown classes {', '.join(unknown[:5])}")
        base = table.parent.parent  # 'file' starts with data/: join it to the parent of data/
        notes: list[str] = []
        stems: dict[Path, dict[str, Path]] = {}
        images: list[ImageRef] = []
        raw, groups, missing = [], [], []
        for r in rows:
            rel = Path(r["file"].strip())
            folder = base / rel.parent
            p = folder / rel.name
            if not p.is_file():  # another extension (.tif tiles are not ruled out)
                p = resolve_image(folder, rel.name, stems.setdefault(folder, files_by_stem(folder)))  # type: ignore[assignment]
            if p is None:
                missing.append(str(rel))
                continue
            images.append(str(p))
            raw.append(r["class"].strip())
            groups.append(r.get("case", "").strip() or str(rel))
        report_missing(name, missing, len(rows), base, f"{_SKIN_SETS[split]} rows of {table.name}", notes)
        require_images(name, images, base, f"{_SKIN_SETS[split]} rows of {table.name}")
        return _labelled_set(name, images, raw, classes, split, table, groups=groups, prompt_names=SKIN_PROMPTS,
                             notes=notes)

    return load


for _name, _classes, _tumor, _desc in (
        ("skincancer", SKIN_CLASSES, False, "16 skin tissue and tumour classes"),
        ("skincancer-tumor", SKIN_TUMOR_CLASSES, True, "the 4 tumour classes (malignicy = tumor; QuiltNet skin_tumor)")):
    register_dataset(DatasetInfo(
        _name, "classification", _skin_loader(_name, _classes, _tumor), folders=("SkinCancer", "skin", "Skin"),
        url="https://heidata.uni-heidelberg.de/dataset.xhtml?persistentId=doi:10.11588/data/7QCR8S (data.zip; "
            "not the ISIC set MUSK's README links)",
        layout="data/tiles-v2.csv (file = data/tiles/<class>/<class>_ws_<a>_<b>.jpg relative to the parent of data/, "
               "class, malignicy, case, set in Train/Validation/Test) + data/tiles/ + data/class_dict.json",
        reference="Kriegsmann et al. 2022, Frontiers in Oncology 10.3389/fonc.2022.1022967", licence="CC-BY-4.0",
        splits=("train", "valid", "test"), class_names=_classes, prompt_names=SKIN_PROMPTS, description=_desc))


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
    raw, missing, notes = [], [], []
    for r in rows:
        p = images_dir / r["Image Name"].strip()
        if not p.is_file():
            missing.append(p.name)
            continue
        images.append(str(p))
        raw.append(r["Majority Vote Label"].strip())
    report_missing("mhist", missing, len(rows), images_dir, "rows of annotations.csv", notes)
    require_images("mhist", images, images_dir, "rows of annotations.csv")
    return _labelled_set("mhist", images, raw, MHIST_CLASSES, split, table, notes=notes)


register_dataset(DatasetInfo(
    "mhist", "classification", load_mhist, folders=("MHIST",), url="https://bmirds.github.io/MHIST/",
    layout="annotations.csv (Image Name, Majority Vote Label, Partition) + images/*.png",
    reference="Wei et al. 2021, AIME", licence="see the data use agreement", splits=("train", "test"),
    class_names=MHIST_CLASSES, description="colorectal polyps HP vs SSA (a candidate for the unknown PMEB datasets)"))
