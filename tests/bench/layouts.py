"""Tiny fixture trees in the exact layouts of the public downloads (file names, folders, tables).

Each ``write_<dataset>(root)`` writes a few small images where the real archive puts them and
the label files the real archive ships, and returns the folder to pass as the dataset's root.
"""

from __future__ import annotations

import csv
import json
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


def write_lc25000(root: Path, per_class: int = 2) -> Path:
    """lung_colon_image_set/{lung,colon}_image_sets/<class>/<prefix><n>.jpeg (the Kaggle/GitHub archive)."""
    base = root / "lung_colon_image_set"
    for organ, classes in (("lung", ("lung_aca", "lung_n", "lung_scc")), ("colon", ("colon_aca", "colon_n"))):
        for c in classes:
            for i in range(per_class):
                image(base / f"{organ}_image_sets" / c / f"{c.replace('_', '')}{i + 1}.jpeg")
    return root


CRC = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def write_crc(root: Path) -> Path:
    """NCT-CRC-HE-100K/<CLASS>/<CLASS>-<ID>.tif and CRC-VAL-HE-7K/<CLASS>/<CLASS>-TCGA-<ID>.tif (zenodo 1214456)."""
    for c in CRC:
        image(root / "NCT-CRC-HE-100K" / c / f"{c}-AAAFLCLY.tif")
        image(root / "NCT-CRC-HE-100K" / c / f"{c}-AAAMHQMK.tif")
        image(root / "CRC-VAL-HE-7K" / c / f"{c}-TCGA-AAICEQFN.tif")
    return root


def write_bach(root: Path) -> Path:
    """ICIAR2018_BACH_Challenge/Photos/<class>/<id>.tif + microscopy_ground_truth.csv (zenodo 3632035)."""
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    rows = []
    for c, prefix in (("Normal", "n"), ("Benign", "b"), ("InSitu", "is"), ("Invasive", "iv")):
        for i in (1, 2):
            image(photos / c / f"{prefix}{i:03d}.tif")
            rows.append([f"{prefix}{i:03d}.tif", c])
    with (photos / "microscopy_ground_truth.csv").open("w") as f:
        f.writelines(f"{a},{b}\n" for a, b in rows)
    return root


def write_wsss4luad(root: Path) -> Path:
    """1.training/<slide>-<x>-<y>-[tumor, stroma, normal].png (grand-challenge download)."""
    for name in ("436219-7159-48057-[1, 0, 0].png", "436219-7159-48569-[1, 0, 0].png", "436220-100-200-[0, 1, 0].png",
                 "436221-300-400-[0, 0, 1].png", "436221-300-912-[0, 0, 1].png", "436222-5-5-[1, 1, 0].png"):
        image(root / "1.training" / name)
    image(root / "2.validation" / "img" / "00.png")  # validation/test have masks, no image labels
    return root


def write_pcam(root: Path, n: int = 6, split: str = "test") -> Path:
    """camelyonpatch_level_2_split_<split>_{x,y}.h5: 'x' (N,96,96,3) uint8, 'y' (N,1,1,1) uint8 (zenodo 2546921)."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
        f.create_dataset("x", data=RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1))
    return root


def write_sicapv2(root: Path) -> Path:
    """SICAPv2/images/*.jpg, SICAPv2/partition/Test/{Train,Test}.xlsx (one-hot NC,G3,G4,G5,G4C) (Mendeley 9xxm58dvs3)."""
    base = root / "SICAPv2"
    header = ["image_name", "NC", "G3", "G4", "G5", "G4C"]
    for split, slide in (("Train", "16B0001851"), ("Test", "18B0006169")):
        rows = []
        for j in range(4):
            name = f"{slide}_Block_Region_1_0_{j}_xini_6803_yini_59786.jpg"
            image(base / "images" / name)
            rows.append([name] + [int(k == j) for k in range(4)] + [0])
        write_xlsx(base / "partition" / "Test" / f"{split}.xlsx", header, rows)
    (base / "masks").mkdir()
    return base


def write_osteo(root: Path) -> Path:
    """ML_Features_1144.csv (image.name, classification, ...) + Training-Set-{1,2}/<case folder>/*.jpg (TCIA)."""
    rows = [["Case 3 A17-41-11 - 2", "Non-Tumor"], ["Case 3 A17-41-11 - 3", "Non-Tumor"],
            ["Case 4 B3-6 - 7", "Viable"], ["Case 4 B3-6 - 8", "Viable"],
            ["Case 45 B11-5 - 1", "Non-Viable-Tumor"], ["Case 45 B11-5 - 2", "viable: non-viable"]]
    write_csv(root / "ML_Features_1144.csv", ["image.name", "classification", "Nuclei.Count"],
              [[a, b, 7] for a, b in rows])
    for i, (name, _) in enumerate(rows):
        image(root / f"Training-Set-{1 + i % 2}" / "Set1_P1" / (name.replace(" - ", "-").replace(" ", "-") + ".jpg"))
    return root


SKIN = ("nontumor_skin_necrosis_necrosis", "nontumor_skin_muscle_skeletal", "nontumor_skin_sweatglands_sweatglands",
        "nontumor_skin_vessel_vessel", "nontumor_skin_elastosis_elastosis", "nontumor_skin_chondraltissue_chondraltissue",
        "nontumor_skin_hairfollicle_hairfollicle", "nontumor_skin_epidermis_epidermis", "nontumor_skin_nerves_nerves",
        "nontumor_skin_subcutis_subcutis", "nontumor_skin_dermis_dermis", "nontumor_skin_sebaceousglands_sebaceousglands",
        "tumor_skin_epithelial_sqcc", "tumor_skin_melanoma_melanoma", "tumor_skin_epithelial_bcc", "tumor_skin_naevus_naevus")


def write_skincancer(root: Path) -> Path:
    """data/tiles-v2.csv (,file,class,set,...) + data/tiles/<class>/<class>_ws_<n>_<m>.jpg (heiDATA 7QCR8S)."""
    rows = []
    for i, c in enumerate(SKIN):
        for n, split in ((1, "Train"), (2, "Test")):
            rel = f"data/tiles/{c}/{c}_ws_44_{n}.jpg"
            image(root / rel)
            rows.append([len(rows), rel, c, split, f"case{i}"])
    write_csv(root / "data" / "tiles-v2.csv", ["", "file", "class", "set", "case"], rows)
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
    """books_set/captions.json {row: {figure_id, letter, caption, uuid}} + images/<uuid>.png; pubmed_set with
    {caption, uuid} rows and images/<uuid>.jpg (warwick.ac.uk/fac/cross_fac/tia/data/arch)."""
    books = {
        "0": {"figure_id": "00", "letter": "A", "caption": "A, Granuloma. B, Giant cells.", "uuid": "b-0"},
        "1": {"figure_id": "00", "letter": "B", "caption": "A, Granuloma. B, Giant cells.", "uuid": "b-1"},
        "2": {"figure_id": "01", "letter": "Single", "caption": "Squamous cell carcinoma with keratin pearls.", "uuid": "b-2"},
        "3": {"figure_id": "02", "letter": "Single", "caption": "Normal alveoli.", "uuid": "b-3"},
    }
    (root / "books_set" / "images").mkdir(parents=True, exist_ok=True)
    (root / "pubmed_set" / "images").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(books.values()):
        if i < len(books) - books_missing:
            image(root / "books_set" / "images" / f"{r['uuid']}.png")
    (root / "books_set" / "captions.json").write_text(json.dumps(books))
    pubmed = {str(i): {"caption": c, "uuid": f"p-{i}"} for i, c in enumerate(
        ["Tumour cells in sheets.", "Tumour cells in sheets.", "Fibrous stroma.", "Necrosis."])}
    for i in range(len(pubmed) - pubmed_missing):
        image(root / "pubmed_set" / "images" / f"p-{i}.jpg")
    (root / "pubmed_set" / "captions.json").write_text(json.dumps(pubmed))
    return root


def write_quilt_vqa(root: Path) -> Path:
    """quiltvqa_test_w_ans.json [{answer, image, question, answer_type, ...}] + quilt_vqa/images/ (HF wisdomik/Quilt_VQA)."""
    rows = [{"question_id": i, "image": f"frame_{i}.jpg", "question": q, "answer": a, "answer_type": t}
            for i, (q, a, t) in enumerate([("What is seen here?", "Granulomas with giant cells.", "OPEN"),
                                           ("Is this malignant?", "Yes, it is a carcinoma.", "CLOSED"),
                                           ("Which layer is this?", "The dermis.", "OPEN")])]
    for r in rows:
        image(root / "quilt_vqa" / "images" / r["image"])
    (root / "quiltvqa_test_w_ans.json").write_text(json.dumps(rows))
    return root


def write_pathmmu(root: Path) -> Path:
    """data.json {subset: {split: [{No, img, question, options, answer, explanation}]}} + images/ (HF jamessyx/PathMMU);
    SocialPath's images are absent, as in a download without the Twitter images."""
    def q(no: int, img: str, answer: str) -> dict[str, object]:
        return {"No": no, "img": img, "question": f"Question {no}?", "options": ["A) Necrosis", "B) Fibrosis",
                "C) Granuloma", "D) Carcinoma"], "answer": answer, "explanation": "..."}

    data = {"PubMed": {"test": [q(1, "pm1.jpg", "C) Granuloma"), q(2, "pm2.jpg", "A) Necrosis")],
                       "val": [q(3, "pm3.jpg", "B) Fibrosis")]},
            "SocialPath": {"test": [q(4, "sp1.jpg", "D) Carcinoma")]},
            "Atlas": {"test": [q(5, "at1.png", "D) Carcinoma")]}}
    for name in ("pm1.jpg", "pm2.jpg", "pm3.jpg", "at1.png"):
        image(root / "images" / name)
    (root / "data.json").write_text(json.dumps(data))
    return root
