"""Tiny fixture trees in the exact native layouts of the public downloads (file and folder names,
table columns, label encodings, known quirks), as ``../shared/FORMATS.md`` section 2 states them.

Each ``write_<dataset>(root)`` writes a few small images where the real archive puts them and
the label files the real archive ships, and returns the folder to pass as the dataset's root.
Where the spec leaves a detail unverified (an extra column's name, a mask's encoding) the fixture
picks one value and the loader probes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def image(path: Path, size: int = 16, color: tuple[int, int, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8) if color is None else np.full((size, size, 3), color, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_xlsx(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A minimal Excel workbook as Excel writes it: strings in xl/sharedStrings.xml, numbers inline."""
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    strings: list[str] = []

    def cell(ref: str, v: object) -> str:
        if isinstance(v, (int, float)):
            return f'<c r="{ref}"><v>{v}</v></c>'
        if str(v) not in strings:
            strings.append(str(v))
        return f'<c r="{ref}" t="s"><v>{strings.index(str(v))}</v></c>'

    body = "".join(f'<row r="{i + 1}">' + "".join(cell(f"{chr(65 + j)}{i + 1}", v) for j, v in enumerate(r)) + "</row>"
                   for i, r in enumerate([header, *rows]))
    sheet = f'<?xml version="1.0" encoding="UTF-8"?><worksheet {ns}><sheetData>{body}</sheetData></worksheet>'
    shared = (f'<?xml version="1.0" encoding="UTF-8"?><sst {ns} count="{len(strings)}">'
              + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("xl/workbook.xml", f'<?xml version="1.0"?><workbook {ns}><sheets><sheet name="Sheet1" sheetId="1"/></sheets></workbook>')
        z.writestr("xl/sharedStrings.xml", shared)
        z.writestr("xl/worksheets/sheet1.xml", sheet)
    return path


LC25000_PREFIX = {"lung_aca": "lungaca", "lung_n": "lungn", "lung_scc": "lungscc", "colon_aca": "colonca",
                  "colon_n": "colonn"}


def write_lc25000(root: Path, per_class: int = 2, groups: bool = False, nested: bool = False) -> Path:
    """``lung_colon_image_set/{lung,colon}_image_sets/<class>/<prefix><N>.jpeg`` (LC25000.zip; the Kaggle copy has
    the same tree). Colon adenocarcinoma files are ``colonca*`` and the extension is ``.jpeg``. ``groups`` adds
    pathmllm's own ``groups.csv`` (not in the download: two consecutive images per near-duplicate group);
    ``nested`` a same-name unzip level."""
    base = root / "lung_colon_image_set"
    if nested:
        base = base / "lung_colon_image_set"
    for organ, classes in (("lung", ("lung_aca", "lung_n", "lung_scc")), ("colon", ("colon_aca", "colon_n"))):
        rows = []
        for c in classes:
            for i in range(per_class):
                image(base / f"{organ}_image_sets" / c / f"{LC25000_PREFIX[c]}{i + 1}.jpeg")
                rows.append([f"{c}/{LC25000_PREFIX[c]}{i + 1}.jpeg", c, f"{c}-{i // 2}"])
        if groups:
            write_csv(base / f"{organ}_image_sets" / "groups.csv", ["path", "label", "group"], rows)
    return root


CRC = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def write_crc(root: Path, nested: bool = False) -> Path:
    """``NCT-CRC-HE-100K/<CLS>/<CLS>-<8 capital letters>.tif`` and ``CRC-VAL-HE-7K/<CLS>/<CLS>-TCGA-<8 letters>.tif``,
    each zip unpacked to a folder of its name (zenodo 1214456); ``nested``: a same-name unzip level."""
    for c in CRC:
        for folder, names in (("NCT-CRC-HE-100K", (f"{c}-AAAFLCLY.tif", f"{c}-AAAMHQMK.tif")),
                              ("CRC-VAL-HE-7K", (f"{c}-TCGA-AAICEQFN.tif",))):
            base = root / folder / folder if nested else root / folder
            for n in names:
                image(base / c / n)
    return root


BACH = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}


def write_bach(root: Path, numbers: tuple[int, ...] = (1, 42, 100), kaggle: bool = False) -> Path:
    """``ICIAR2018_BACH_Challenge/Photos/{Benign,InSitu,Invasive,Normal}/{b,is,iv,n}NNN.tif`` with
    ``Photos/microscopy_ground_truth.csv`` (no header, ``<file>,<class>``, ordered Normal, Benign, InSitu,
    Invasive), ``WSI/A01.svs`` (+ .xml), and the unlabelled ``ICIAR2018_BACH_Challenge_TestDataset/Photos/test<N>.tif``
    (zenodo 3632035). ``kaggle``: the Kaggle copy's doubled ``ICIAR2018_BACH_Challenge/`` level."""
    top = root / "ICIAR2018_BACH_Challenge"
    if kaggle:
        top = top / "ICIAR2018_BACH_Challenge"
    photos = top / "Photos"
    rows = []
    for c, prefix in BACH.items():
        for i in numbers:
            image(photos / c / f"{prefix}{i:03d}.tif")
            rows.append(f"{prefix}{i:03d}.tif,{c}\n")
    (photos / "microscopy_ground_truth.csv").write_text("".join(rows))
    (top / "WSI").mkdir(parents=True, exist_ok=True)
    (top / "WSI" / "A01.svs").write_bytes(b"")
    (top / "WSI" / "A01.xml").write_text("<Annotations/>")
    image(root / "ICIAR2018_BACH_Challenge_TestDataset" / "Photos" / "test0.tif")
    return root


WSSS_PALETTE = [(0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255)]


def wsss_mask(path: Path, classes: tuple[int, ...], size: int = 12) -> Path:
    """A palette (``P``) mask: index 0 tumor, 1 stroma, 2 normal, 3 background; one band per class in
    ``classes`` and background in the last row."""
    arr = np.full((size, size), 3, np.uint8)
    for k, c in enumerate(classes):
        arr[k * 2: k * 2 + 2, :] = c
    im = Image.fromarray(arr, mode="P")
    im.putpalette([v for rgb in WSSS_PALETTE for v in rgb] + [0] * (256 - len(WSSS_PALETTE)) * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def write_wsss4luad(root: Path, nested: bool = False) -> Path:
    """``1.training/<slide>-<x>-<y>-[T, S, N].png`` (flat; multi-hot label vector in the name) and
    ``{2.validation,3.testing}/{img,mask,background-mask}/NN.png`` (palette masks; background-mask tissue = 0)
    (grand-challenge wsss4luad). ``nested``: the same-name unzip (``1.training/1.training/``,
    ``2.validation/2.validation/img/``)."""
    def top(name: str) -> Path:
        return root / name / name if nested else root / name

    for name in ("436219-7159-48057-[1, 0, 0].png", "436219-7159-48569-[1, 0, 0].png", "436220-100-200-[0, 1, 0].png",
                 "436221-300-400-[0, 0, 1].png", "436221-300-912-[0, 0, 1].png", "436222-5-5-[1, 1, 0].png"):
        image(top("1.training") / name)
    for folder, masks in (("2.validation", {"00": (0,), "01": (1, 2), "02": (2,), "03": (1,)}),
                          ("3.testing", {"00": (0,), "01": (), "02": (1,), "03": (2,)})):
        for nn, classes in masks.items():
            image(top(folder) / "img" / f"{nn}.png", size=12)
            wsss_mask(top(folder) / "mask" / f"{nn}.png", classes)
            bg = np.where(np.asarray(Image.open(top(folder) / "mask" / f"{nn}.png")) == 3, 255, 0).astype(np.uint8)
            (top(folder) / "background-mask").mkdir(parents=True, exist_ok=True)
            Image.fromarray(bg, mode="L").save(top(folder) / "background-mask" / f"{nn}.png")
    return root


def write_pcam(root: Path, n: int = 6, split: str = "test", gz: bool = True, meta: bool = True) -> Path:
    """``camelyonpatch_level_2_split_<split>_{x,y}.h5.gz`` as downloaded (``gz=False``: gunzipped ``.h5``):
    'x' (N,96,96,3) uint8, 'y' (N,1,1,1) uint8 with label y[i,0,0,0]; ``_meta.csv`` (unnamed index, coord_y,
    coord_x, tumor_patch, center_tumor_patch, wsi); the train split's ``_mask.h5`` ('mask') (zenodo 2546921)."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    y = (np.arange(n) % 2).astype(np.uint8)

    def h5(part: str, key: str, data: np.ndarray) -> None:
        path = root / f"camelyonpatch_level_2_split_{split}_{part}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=data)
        if gz and part != "mask":
            with path.open("rb") as src, gzip.open(path.with_name(path.name + ".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()

    h5("x", "x", RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
    h5("y", "y", y.reshape(n, 1, 1, 1))
    if split == "train":
        h5("mask", "mask", np.zeros((n, 96, 96), np.uint8))
    if meta:
        kinds = ("train_normal", "train_tumor", "test")
        write_csv(root / f"camelyonpatch_level_2_split_{split}_meta.csv",
                  ["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"],
                  [[i, 100 * i, 200 * i, bool(y[i]), bool(y[i]), f"camelyon16_{kinds[i % 3]}_{i // 3:03d}"]
                   for i in range(n)])
    return root


SICAP_SLIDES = {"Train": (("16B0001851", "1"), ("16B0003388", "2")), "Test": (("18B0006169", "3"), ("17B0027580", "3"))}


def write_sicapv2(root: Path, extension_in_name: bool = True) -> Path:
    """``SICAPv2/images/<slide>_Block_Region_<r>_<i>_<j>_xini_<x>_yini_<y>.jpg``, ``masks/`` (half as
    ``<image name>.jpg``, half as ``<stem>.png``: sources disagree), ``partition/Test/{Train,Test,TrainCribriform,
    TestCribriform}.xlsx`` (``image_name, NC, G3, G4, G5, G4C``: one-hot), ``partition/Validation/Val1..4/
    {Train,Test}.xlsx``, ``wsi_labels.xlsx`` (``slide_id, patient_id, Gleason_primary, Gleason_secondary``) and
    ``readme.txt`` (Mendeley 9xxm58dvs3). ``extension_in_name=False``: image_name without ``.jpg``."""
    base = root / "SICAPv2"
    header = ["image_name", "NC", "G3", "G4", "G5", "G4C"]
    wsi = []
    for split, slides in SICAP_SLIDES.items():
        rows = []
        for j in range(4):
            slide, patient = slides[j % 2]
            name = f"{slide}_Block_Region_1_0_{j}_xini_6803_yini_59786.jpg"
            image(base / "images" / name)
            image(base / "masks" / (name if j % 2 else name.replace(".jpg", ".png")), color=(255, 255, 255))
            rows.append([name if extension_in_name else name[:-4]] + [int(k == j) for k in range(4)] + [int(j == 2)])
        for slide, patient in slides:
            if [slide, patient, 3, 4] not in wsi:
                wsi.append([slide, patient, 3, 4])
        write_xlsx(base / "partition" / "Test" / f"{split}.xlsx", header, rows)
        write_xlsx(base / "partition" / "Test" / f"{split}Cribriform.xlsx", ["image_name", "cribriform"],
                   [[r[0], r[-1]] for r in rows])
        for k in range(1, 5):
            write_xlsx(base / "partition" / "Validation" / f"Val{k}" / f"{split}.xlsx", header, rows)
    write_xlsx(base / "wsi_labels.xlsx", ["slide_id", "patient_id", "Gleason_primary", "Gleason_secondary"], wsi)
    (base / "readme.txt").write_text("SICAPv2\n")
    return base


#: ML_Features_1144.csv: (patient token, name form) -> label counts (536 / 263 / 292 / 53 in all; P9 all Non-Tumor)
OSTEO_GROUPS = {("Case 3", "Case 3 A{b}-{a}-{c}"): (130, 90, 100, 20),
                ("Case 4", "Case 4 B{b}-{a}-{c}"): (130, 90, 100, 18),
                ("Case 48", "Case 48 - P5 C{b}-{a}-{c}"): (126, 83, 92, 15),
                ("P9", "P9 D{b}-{a}-{c}"): (150, 0, 0, 0)}
OSTEO_LABELS = ("Non-Tumor", "Non-Viable-Tumor", "Viable", "viable: non-viable")
OSTEO_CSV_BYTES = 880_995


def osteo_rows() -> list[tuple[str, str, str]]:
    """(image.name, classification, patient token) for the 1,144 rows."""
    rows = []
    for (group, form), counts in OSTEO_GROUPS.items():
        k = 0
        for label, count in zip(OSTEO_LABELS, counts):
            for _ in range(count):
                k += 1
                rows.append((form.format(a=k // 30 + 1, b=k % 30 + 1, c=k), label, group))
    return rows


def write_osteo(root: Path, images_per_group: int | None = None) -> Path:
    """TCIA's ``ML_Features_1144.csv`` (exactly 880,995 bytes, 1,144 rows x 69 columns: ``image.name`` with spaces,
    67 numeric features, ``classification``) beside ``Training-Set-{1,2}/set<k>/<image>.jpg``, the file name being
    ``image.name`` with ``" - "`` then ``" "`` replaced by ``"-"``. ``images_per_group``: write only that many images
    per (patient, label), as a partial download (default: all)."""
    rows = osteo_rows()
    n_feat = 67
    header = ",".join(["image.name"] + [f"feature.{i:02d}" for i in range(1, n_feat + 1)] + ["classification"]) + "\n"
    base_size = len(header.encode()) + sum(len(f"{name},{','.join(['0.5'] * n_feat)},{label}\n".encode())
                                           for name, label, _ in rows)
    extra, rest = divmod(OSTEO_CSV_BYTES - base_size, len(rows) * n_feat)
    assert extra >= 0
    lines, cell = [header], 0
    for name, label, _ in rows:
        feats = []
        for _ in range(n_feat):
            feats.append("0.5" + "0" * (extra + (cell < rest)))
            cell += 1
        lines.append(f"{name},{','.join(feats)},{label}\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "ML_Features_1144.csv").write_bytes("".join(lines).encode())
    assert (root / "ML_Features_1144.csv").stat().st_size == OSTEO_CSV_BYTES
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    seen: dict[tuple[str, str], int] = {}
    for i, (name, label, group) in enumerate(rows):
        seen[(group, label)] = seen.get((group, label), 0) + 1
        if images_per_group is not None and seen[(group, label)] > images_per_group:
            continue
        k = 1 + list(OSTEO_GROUPS).index(next(g for g in OSTEO_GROUPS if g[0] == group)) * 3 + i % 3
        path = root / f"Training-Set-{1 + (k > 6)}" / f"set{k}" / (name.replace(" - ", "-").replace(" ", "-") + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return root


SKIN = ("nontumor_skin_necrosis_necrosis", "nontumor_skin_muscle_skeletal", "nontumor_skin_sweatglands_sweatglands",
        "nontumor_skin_vessel_vessel", "nontumor_skin_elastosis_elastosis", "nontumor_skin_chondraltissue_chondraltissue",
        "nontumor_skin_hairfollicle_hairfollicle", "nontumor_skin_epidermis_epidermis", "nontumor_skin_nerves_nerves",
        "nontumor_skin_subcutis_subcutis", "nontumor_skin_dermis_dermis", "nontumor_skin_sebaceousglands_sebaceousglands",
        "tumor_skin_epithelial_sqcc", "tumor_skin_melanoma_melanoma", "tumor_skin_epithelial_bcc", "tumor_skin_naevus_naevus")
#: the 9 of the 14 tiles-v2.csv columns whose names are not known: placeholders
SKIN_UNKNOWN_COLUMNS = [f"unknown_{i}" for i in range(1, 10)]


def write_skincancer(root: Path) -> Path:
    """``data/class_dict.json``, ``data/tiles-v2.csv`` (14 columns: ``file`` starting with ``data/``, ``class`` = the
    folder, ``malignicy`` tumor/nontumor, ``case``, 9 unknown ones, ``set`` Train/Validation/Test last) and
    ``data/tiles/<class>/<class>_ws_<a>_<b>.jpg`` (heiDATA doi:10.11588/data/7QCR8S, data.zip)."""
    rows = []
    for i, c in enumerate(SKIN):
        for n, split in ((1, "Train"), (2, "Test"), (3, "Validation")):
            rel = f"data/tiles/{c}/{c}_ws_44_{n}.jpg"
            image(root / rel)
            rows.append([rel, c, "tumor" if c.startswith("tumor_") else "nontumor", f"case{i:03d}-{n % 2}",
                         *range(9), split])
    write_csv(root / "data" / "tiles-v2.csv", ["file", "class", "malignicy", "case", *SKIN_UNKNOWN_COLUMNS, "set"], rows)
    (root / "data" / "class_dict.json").write_text(json.dumps({c: i for i, c in enumerate(SKIN)}))
    return root


def write_mhist(root: Path) -> Path:
    rows = []
    for i, (label, part) in enumerate((("HP", "train"), ("SSA", "train"), ("HP", "test"), ("SSA", "test"))):
        image(root / "images" / f"MHIST_a{i:02d}.png")
        rows.append([f"MHIST_a{i:02d}.png", label, 2, part])
    write_csv(root / "annotations.csv", ["Image Name", "Majority Vote Label",
                                         "Number of Annotators who Selected SSA (Out of 7)", "Partition"], rows)
    return root


def write_arch(root: Path, books_missing: int = 1, pubmed_missing: int = 0) -> Path:
    """``books_set/{README.md, captions.json, images/<uuid>.png}`` and ``pubmed_set/{README.md, captions.json,
    images/<uuid>.jpg|png}`` plus ``__MACOSX/`` junk (warwick.ac.uk/fac/cross_fac/tia/data/arch).
    ``captions.json`` is an object keyed by row index (pandas orient='index'); books rows ``{figure_id, letter,
    caption, uuid}`` (``letter`` "A".."L" or "Single"; captions mostly start with a space), PubMed rows ``{caption,
    uuid}`` (two rows share a caption). The last ``books_missing`` books rows have no image."""
    books = {
        "0": {"figure_id": "00", "letter": "A", "caption": " A, Granuloma. B, Giant cells.", "uuid": "b-0"},
        "1": {"figure_id": "00", "letter": "B", "caption": " A, Granuloma. B, Giant cells.", "uuid": "b-1"},
        "2": {"figure_id": "01", "letter": "Single", "caption": " Squamous cell carcinoma with keratin pearls.",
              "uuid": "b-2"},
        "3": {"figure_id": "02", "letter": "Single", "caption": "Normal alveoli.", "uuid": "b-3"},
    }
    for subset in ("books_set", "pubmed_set"):
        (root / subset / "images").mkdir(parents=True, exist_ok=True)
        (root / subset / "README.md").write_text(f"# ARCH {subset}\n")
        (root / "__MACOSX" / subset / "images").mkdir(parents=True, exist_ok=True)
        (root / "__MACOSX" / subset / "._captions.json").write_bytes(b"\x00\x05\x16\x07")
    for i, r in enumerate(books.values()):
        if i < len(books) - books_missing:
            image(root / "books_set" / "images" / f"{r['uuid']}.png")
            (root / "__MACOSX" / "books_set" / "images" / f"._{r['uuid']}.png").write_bytes(b"\x00\x05\x16\x07")
    (root / "books_set" / "captions.json").write_text(json.dumps(books))
    pubmed = {str(i): {"caption": c, "uuid": f"p-{i}"} for i, c in enumerate(
        ["Tumour cells in sheets.", "Tumour cells in sheets.", "Fibrous stroma.", "Necrosis."])}
    for i in range(len(pubmed) - pubmed_missing):
        image(root / "pubmed_set" / "images" / f"p-{i}.{'png' if i == 2 else 'jpg'}")
    (root / "pubmed_set" / "captions.json").write_text(json.dumps(pubmed))
    return root


QUILT_QA = [("frame_0.jpg", "What is seen here?", "Granulomas with giant cells.", "OPEN"),
            ("frame_0.jpg", "Is this malignant?", "No, it is a benign granuloma.", "CLOSED"),
            ("frame_1.jpg", "Which layer is this?", "The dermis.", "OPEN")]


def write_quilt_vqa(root: Path, unzip: bool = True, parquet: bool = False, json_files: bool = True) -> Path:
    """``quiltvqa_test_wo_ans.jsonl`` ({question_id, image, text} per line), ``quiltvqa_test_w_ans.json`` (a list
    aligned by position: answer, answer_type, yes_no_answer on CLOSED rows) and ``quilt_vqa.zip`` (members
    ``quilt_vqa/images/<image>``; ``unzip`` also unpacks it) (HF wisdomik/Quilt_VQA). ``parquet`` adds the Hub's
    ``data/train-00000-of-00001-e5107276f24d7201.parquet`` (image {bytes, path}, question, answer, answer_type,
    context; one row per image)."""
    root.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for name in dict.fromkeys(r[0] for r in QUILT_QA):
        buf = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
        blobs[name] = buf.getvalue()
    with zipfile.ZipFile(root / "quilt_vqa.zip", "w") as z:
        for name, data in blobs.items():
            z.writestr(f"quilt_vqa/images/{name}", data)
        z.writestr("__MACOSX/quilt_vqa/images/._frame_0.jpg", b"\x00")
    if unzip:
        for name, data in blobs.items():
            (root / "quilt_vqa" / "images").mkdir(parents=True, exist_ok=True)
            (root / "quilt_vqa" / "images" / name).write_bytes(data)
    if json_files:
        (root / "quiltvqa_test_wo_ans.jsonl").write_text("".join(
            json.dumps({"question_id": i, "image": img, "text": q}) + "\n" for i, (img, q, _, _) in enumerate(QUILT_QA)))
        (root / "quiltvqa_test_w_ans.json").write_text(json.dumps(
            [{"answer": a, "answer_type": t, **({"yes_no_answer": a.split(",")[0].lower()} if t == "CLOSED" else {})}
             for _, _, a, t in QUILT_QA]))
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = {}
        for img, q, a, t in QUILT_QA:
            first.setdefault(img, (q, a, t))
        table = pa.table({"image": [{"bytes": blobs[i], "path": i} for i in first],
                          "question": [v[0] for v in first.values()], "answer": [v[1] for v in first.values()],
                          "answer_type": [v[2] for v in first.values()], "context": ["" for _ in first]})
        (root / "data").mkdir(exist_ok=True)
        pq.write_table(table, root / "data" / "train-00000-of-00001-e5107276f24d7201.parquet")
    return root


def write_pathmmu(root: Path, zipped: bool = False) -> Path:
    """``data.json`` ({subset: {split: [{No, img, question, options ['A) ...'], answer (the full option string),
    explanation, source_img (Atlas and PathCLS)}]}} with subsets PubMed, SocialPath, EduContent, Atlas, PathCLS and
    splits val, test, test_tiny) + ``images/<img>`` (HF jamessyx/PathMMU). SocialPath's images are absent, as in a
    download without the Twitter images; ``zipped``: images as ``images.zip``."""
    def q(no: int, img: str, answer: str, source: bool = False) -> dict[str, object]:
        rec: dict[str, object] = {"No": no, "img": img, "question": f"Question {no}?",
                                  "options": ["A) Necrosis", "B) Fibrosis", "C) Granuloma", "D) Carcinoma"],
                                  "answer": answer, "explanation": "..."}
        if source:
            rec["source_img"] = f"source/{img}"
        return rec

    data = {"PubMed": {"val": [q(3, "a1b2c3.jpg", "B) Fibrosis")],
                       "test": [q(1, "d4e5f6.jpg", "C) Granuloma"), q(2, "0a9b8c.jpg", "A) Necrosis")],
                       "test_tiny": [q(1, "d4e5f6.jpg", "C) Granuloma")]},
            "SocialPath": {"val": [], "test": [q(4, "7f6e5d.jpg", "D) Carcinoma")], "test_tiny": []},
            "EduContent": {"val": [], "test": [q(6, "c3d2e1.png", "B) Fibrosis")], "test_tiny": []},
            "Atlas": {"val": [], "test": [q(5, "1f2e3d.png", "D) Carcinoma", source=True)], "test_tiny": []},
            "PathCLS": {"val": [], "test": [q(7, "9e8d7c.jpg", "A) Necrosis", source=True)], "test_tiny": []}}
    present = ("a1b2c3.jpg", "d4e5f6.jpg", "0a9b8c.jpg", "c3d2e1.png", "1f2e3d.png", "9e8d7c.jpg")
    for name in present:
        image(root / "images" / name)
    if zipped:
        with zipfile.ZipFile(root / "images.zip", "w") as z:
            for name in present:
                z.write(root / "images" / name, f"images/{name}")
        shutil.rmtree(root / "images")
    (root / "data.json").write_text(json.dumps(data))
    return root


def write_hf_parquet(path: Path, n: int, columns: dict[str, list[object]],
                     class_labels: dict[str, list[str]] | None = None) -> Path:
    """A Hugging Face Hub parquet file: an ``image`` column of ``{bytes, path}`` structs (``n`` small PNGs) plus
    ``columns``; ``class_labels`` records ``ClassLabel`` names in the ``huggingface`` schema metadata, as the Hub does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    table = pa.table({"image": blobs, **columns})
    features: dict[str, object] = {"image": {"_type": "Image"}}
    for name in columns:
        features[name] = ({"_type": "ClassLabel", "names": class_labels[name]} if class_labels and name in class_labels
                          else {"_type": "Value"})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
