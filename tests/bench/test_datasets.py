"""Each dataset loader on a fixture tree written in the public download's native layout
(``../shared/FORMATS.md`` section 2), its quirks (nesting, label encodings, malformed records,
absent images), and the clear errors for folders in the wrong layout."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pathmllm.bench.datasets import (
    DATASETS,
    CaptionSet,
    ClassificationSet,
    DatasetLayoutError,
    DatasetNotFoundError,
    GroupsRequiredError,
    H5Image,
    ParquetImage,
    SplitNotAvailableError,
    VQASet,
    ZipImage,
    dataset_info,
    find_dataset_root,
    load_builtin_datasets,
    read_images,
    split_train_test,
    subsample,
)
from pathmllm.bench.datasets.xlsx import read_xlsx
from tests.bench import layouts


def load(name: str, root: Path, split: str | None = None):  # noqa: ANN201
    return dataset_info(name).load(root, split)


def test_registry_lists_the_pmeb_datasets_with_where_they_are_published() -> None:
    load_builtin_datasets()
    assert {"wsss4luad", "lc25000-lung", "lc25000-colon", "bach", "crc-100k", "osteo", "sicapv2", "pcam",
            "skincancer", "skincancer-tumor", "arch-books", "arch-pubmed", "quilt-vqa", "pathmmu",
            "mhist"} <= set(DATASETS.names())
    for e in DATASETS:
        assert e.obj.url and e.obj.layout and e.obj.folders
        if e.obj.kind == "classification" and e.name != "mhist":
            assert e.obj.prompt_names, e.name  # rule 5: which prompt-name map


# ---- LC25000 -----------------------------------------------------------------------------
def test_lc25000_lung_and_colon(tmp_path: Path) -> None:
    root = layouts.write_lc25000(tmp_path / "LC25000")
    lung, colon = load("lc25000-lung", root), load("lc25000-colon", root)
    assert isinstance(lung, ClassificationSet) and len(lung) == 6 and lung.classes == ["lung_aca", "lung_n", "lung_scc"]
    assert lung.class_names == ["lung adenocarcinoma", "benign lung", "lung squamous cell carcinoma"]
    assert "QuiltNet" in lung.prompt_names and list(np.bincount(lung.labels)) == [2, 2, 2]
    assert len(colon) == 4 and colon.classes == ["colon_aca", "colon_n"]
    assert colon.class_names == ["colon adenocarcinoma", "benign colonic tissue"]
    # the label is the folder; files are .jpeg and colon adenocarcinoma is colonca*
    assert all(Path(p).parent.name == lung.classes[y] for p, y in zip(lung.images, lung.labels))
    assert {Path(p).name for p in colon.images} == {"colonca1.jpeg", "colonca2.jpeg", "colonn1.jpeg", "colonn2.jpeg"}
    # found under --data-root by its folder name
    assert find_dataset_root(dataset_info("lc25000-lung"), tmp_path) == root


def test_lc25000_is_found_at_any_depth_and_in_flat_and_parquet_mirrors(tmp_path: Path) -> None:
    nested = layouts.write_lc25000(tmp_path / "kaggle", nested=True)
    assert len(load("lc25000-lung", nested)) == 6
    flat = tmp_path / "flat" / "LC25000"  # GeorgeBatch/LC25000-clean, PathMMU: LC25000/<class>/
    for c in ("lung_aca", "lung_n", "lung_scc", "colon_aca", "colon_n"):
        layouts.image(flat / c / f"{layouts.LC25000_PREFIX[c]}1.jpeg")
    assert len(load("lc25000-lung", tmp_path / "flat")) == 3 and len(load("lc25000-colon", flat)) == 2
    names = ["colon_aca", "colon_n", "lung_aca", "lung_n", "lung_scc"]
    layouts.write_hf_parquet(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet", 5,
                             {"label": [0, 1, 2, 3, 4]}, {"label": names})
    lung = load("lc25000-lung", tmp_path / "hf")
    assert len(lung) == 3 and list(lung.labels) == [0, 1, 2] and isinstance(lung.images[0], ParquetImage)
    arr = read_images(lung.images[:1])[0]
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8


def test_lc25000_may_only_be_split_by_group(tmp_path: Path) -> None:
    data = load("lc25000-lung", layouts.write_lc25000(tmp_path / "LC25000", per_class=4))
    assert data.group_split_required and data.groups is None
    with pytest.raises(GroupsRequiredError, match="must be split by patient or near-duplicate group.*groups.csv"):
        split_train_test(data)
    grouped = load("lc25000-lung", layouts.write_lc25000(tmp_path / "G", per_class=4, groups=True))
    assert grouped.groups is not None
    train, test = split_train_test(grouped, 0.5)
    assert not set(train.groups) & set(test.groups)


# ---- CRC-100K ----------------------------------------------------------------------------
def test_crc_uses_the_validation_set_for_evaluation_and_the_100k_set_for_training(tmp_path: Path) -> None:
    root = layouts.write_crc(tmp_path / "CRC100K")
    test, train = load("crc-100k", root), load("crc-100k", root, "train")
    assert len(test) == 9 and all("CRC-VAL-HE-7K" in p for p in test.images) and test.split == "test"
    assert len(train) == 18 and all("NCT-CRC-HE-100K" in p for p in train.images)
    assert test.classes == list(layouts.CRC) and len(test.class_names) == 9 and "PLIP" in test.prompt_names
    assert test.class_names[list(layouts.CRC).index("STR")] == "cancer-associated stroma"
    nested = layouts.write_crc(tmp_path / "nested", nested=True)  # each zip unpacked into a same-name folder
    assert len(load("crc-100k", nested)) == 9 and len(load("crc-100k", nested, "train")) == 18


# ---- BACH --------------------------------------------------------------------------------
def test_bach_labels_come_from_the_headerless_csv_and_groups_are_patient_blocks(tmp_path: Path) -> None:
    root = layouts.write_bach(tmp_path / "BACH")
    data = load("bach", root)
    assert len(data) == 12 and data.classes == ["Normal", "Benign", "InSitu", "Invasive"] and not data.notes
    assert data.class_names[:2] == ["breast normal breast tissue", "breast non-malignant benign tissue"]
    assert Path(data.images[0]).name == "n001.tif"  # the CSV's first row is data (header=None)
    assert all(Path(p).parent.name == data.classes[y] for p, y in zip(data.images, data.labels))
    assert not any("test0" in p for p in data.images)  # the unlabelled test set is not part A's labelled set
    # eva's patient-aware ranges: b001 (index 0) and b042 (41) are in different blocks, n042 (341) and n100 (399) too
    by_name = {Path(p).name: g for p, g in zip(data.images, data.groups)}
    assert by_name["b001.tif"] != by_name["b042.tif"] and by_name["n001.tif"] == by_name["n042.tif"] != by_name["n100.tif"]
    assert by_name["b100.tif"] == by_name["is001.tif"]  # one block spans the class boundary (90, 139)
    train, test = split_train_test(data, 0.3)
    assert not set(train.groups) & set(test.groups) and data.group_split_required
    kaggle = layouts.write_bach(tmp_path / "kaggle", kaggle=True)
    assert len(load("bach", kaggle)) == 12


def test_bach_skips_and_reports_what_the_csv_and_folders_disagree_on(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.write_bach(tmp_path / "BACH")
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    gt = photos / "microscopy_ground_truth.csv"
    rows = gt.read_text().splitlines()
    rows[0] = "n001.tif,Benign"  # the CSV says Benign; the file is in Normal/
    rows.append("n555.tif,Normal")  # no such image
    rows.append("just-one-field")
    gt.write_text("\n".join(rows) + "\n")
    layouts.image(photos / "Normal" / "n077.tif")  # in a folder but not in the CSV
    (photos / "Normal" / "notes.txt").write_text("not an image")
    layouts.image(photos / "Normal" / "n078.png")  # non-TIFF files in the class folders are not BACH photos
    with caplog.at_level(logging.WARNING):
        data = load("bach", root)
    assert len(data) == 11
    text = "\n".join(data.notes)
    assert "1 image(s) whose CSV class and folder disagree skipped: n001.tif (Benign in the CSV, in Normal/)" in text
    assert "1 of 14 rows of microscopy_ground_truth.csv name images absent" in text and "n555.tif" in text
    assert "1 malformed row(s)" in text and "not in microscopy_ground_truth.csv; left out: n077.tif" in text
    assert "disagree" in caplog.text
    gt.unlink()
    fallback = load("bach", root)
    assert len(fallback) == 13 and "labels taken from the class folders" in fallback.notes[0]


# ---- WSSS4LUAD ---------------------------------------------------------------------------
def test_wsss4luad_train_labels_come_from_the_file_names(tmp_path: Path) -> None:
    data = load("wsss4luad", layouts.write_wsss4luad(tmp_path / "WSSS4LUAD"))
    assert len(data) == 5 and list(np.bincount(data.labels)) == [2, 1, 2] and data.split == "train"
    assert data.classes == ["Tumor", "Stroma", "Normal"] and data.class_names == ["tumor", "stroma", "normal"]
    assert data.groups == ["436219", "436219", "436220", "436221", "436221"]
    assert "1 multi-label" in data.notes[0] and "unknown" in data.prompt_names
    nested = load("wsss4luad", layouts.write_wsss4luad(tmp_path / "nested", nested=True))
    assert len(nested) == 5


def test_wsss4luad_label_vector_is_split_on_comma_space_and_bad_names_are_skipped(tmp_path: Path) -> None:
    from pathmllm.bench.datasets.classification import wsss_name_label

    assert wsss_name_label("436219-7159-48057-[1, 0, 1].png") == [1, 0, 1]
    assert wsss_name_label("436219-7159-48057-[1,0,0].png") is None and wsss_name_label("x.png") is None
    root = layouts.write_wsss4luad(tmp_path / "W")
    layouts.image(root / "1.training" / "436300-1-1-[1,0,0].png")
    layouts.image(root / "1.training" / "436300-1-2.png")
    layouts.image(root / "1.training" / "436300-1-3-[0, 1, 0].PNG")  # extensions match case-insensitively
    data = load("wsss4luad", root)
    assert len(data) == 6
    assert "2 of 9 PNG(s)" in data.notes[0] and "436300-1-1-[1,0,0].png" in data.notes[0]


def test_wsss4luad_validation_and_test_labels_come_from_palette_masks(tmp_path: Path) -> None:
    from pathmllm.bench.datasets.classification import wsss_mask_labels

    root = layouts.write_wsss4luad(tmp_path / "W")
    valid, test = load("wsss4luad", root, "valid"), load("wsss4luad", root, "test")
    # 2.validation: 00 tumor, 01 stroma + normal (left out), 02 normal, 03 stroma
    assert [Path(p).name for p in valid.images] == ["00.png", "02.png", "03.png"] and list(valid.labels) == [0, 2, 1]
    # 3.testing: 01 is background only
    assert [Path(p).name for p in test.images] == ["00.png", "02.png", "03.png"] and "1 without a tissue class" in \
        test.notes[0]
    mask = root / "2.validation" / "mask" / "01.png"
    assert wsss_mask_labels(mask) == {1, 2}
    from PIL import Image

    Image.open(mask).convert("RGB").save(tmp_path / "rgb.png")  # an RGB copy maps through the palette colours
    assert wsss_mask_labels(tmp_path / "rgb.png") == {1, 2}
    (root / "2.validation" / "mask" / "01.png").unlink()
    valid = load("wsss4luad", root, "valid")
    assert len(valid) == 3 and "1 of 4 images of" in valid.notes[0] and "01.png" in valid.notes[0]
    nested = layouts.write_wsss4luad(tmp_path / "nested", nested=True)
    assert len(load("wsss4luad", nested, "valid")) == 3


# ---- PCam --------------------------------------------------------------------------------
def test_pcam_reads_the_gzipped_download_lazily(tmp_path: Path, _private_bench_cache: Path) -> None:
    root = layouts.write_pcam(tmp_path / "PCam")
    assert (root / "camelyonpatch_level_2_split_test_x.h5.gz").is_file()
    data = load("pcam", root)
    assert len(data) == 6 and isinstance(data.images[0], H5Image) and list(data.labels) == [0, 1, 0, 1, 0, 1]
    assert data.classes == ["0", "1"] and data.class_names[1] == "lymph node containing metastatic tumor tissue"
    assert Path(data.images[0].path).is_relative_to(_private_bench_cache)  # decompressed into the cache, once
    assert data.groups is not None and data.groups[0] == "camelyon16_train_normal_000"
    arrays = read_images([data.images[4], data.images[1]])
    import h5py

    with h5py.File(data.images[0].path) as f:
        assert np.array_equal(arrays[0], f["x"][4]) and np.array_equal(arrays[1], f["x"][1])
    assert load("pcam", root).images[0] == data.images[0]
    with pytest.raises(SplitNotAvailableError, match=r"camelyonpatch_level_2_split_train_x\.h5 \(or \.h5\.gz\)"):
        load("pcam", root, "train")


def test_pcam_reads_gunzipped_files_and_hf_parquet(tmp_path: Path) -> None:
    root = layouts.write_pcam(tmp_path / "PCam", gz=False, split="train")
    data = load("pcam", root, "train")
    assert len(data) == 6 and data.images[0].path.startswith(str(root))
    hf = tmp_path / "hf"  # 1aurent/PatchCamelyon: bool labels; dpdl-benchmark: "0"/"1", split 'validation'
    layouts.write_hf_parquet(hf / "data" / "test-00000-of-00001.parquet", 4, {"label": [False, True, True, False]})
    layouts.write_hf_parquet(hf / "data" / "validation-00000-of-00001.parquet", 2, {"label": ["0", "1"]})
    test, valid = load("pcam", hf), load("pcam", hf, "valid")
    assert list(test.labels) == [0, 1, 1, 0] and list(valid.labels) == [0, 1]
    assert read_images(test.images[1:2])[0].shape == (8, 8, 3)
    with pytest.raises(SplitNotAvailableError, match="no 'train' split"):
        load("pcam", hf, "train")


# ---- SICAPv2 -----------------------------------------------------------------------------
def test_sicapv2_reads_its_excel_partitions_and_groups_by_patient(tmp_path: Path) -> None:
    root = layouts.write_sicapv2(tmp_path)
    rows = read_xlsx(root / "partition/Test/Test.xlsx")
    assert rows[0]["image_name"].startswith("18B0006169") and rows[2]["G4"] == "1" and "G4C" in rows[0]
    test, train = load("sicapv2", tmp_path), load("sicapv2", root, "train")
    assert len(test) == 4 and len(train) == 4 and list(test.labels) == [0, 1, 2, 3]
    assert test.classes == ["NC", "G3", "G4", "G5"] and test.class_names[1] == "atrophic dense glands"
    assert test.groups == ["3", "3", "3", "3"] and train.groups == ["1", "2", "1", "2"]  # wsi_labels.xlsx patients
    bare = layouts.write_sicapv2(tmp_path / "bare", extension_in_name=False)  # image_name without .jpg
    assert len(load("sicapv2", bare)) == 4


def test_sicapv2_skips_rows_without_a_class_and_probes_both_mask_names(tmp_path: Path) -> None:
    from pathmllm.bench.datasets.tables import sicap_mask

    root = layouts.write_sicapv2(tmp_path)
    header = ["", "image_name", "NC", "G3", "G4", "G5", "G4C"]  # an index column is tolerated
    names = [r["image_name"] for r in read_xlsx(root / "partition/Test/Test.xlsx")]
    layouts.write_xlsx(root / "partition/Test/Test.xlsx", header,
                       [[0, names[0], 1, 0, 0, 0, 0], [1, names[1], 0, 0, 0, 0, 0], [2, "gone.jpg", 0, 1, 0, 0, 0],
                        [3, names[2], 0, 1, 0, 0, 0], [4, names[3], 0, 0, 1, 0, 0], [5, names[0].replace("1_0_0", "9"),
                                                                                  0, 0, 0, 1, 0]])
    with pytest.raises(DatasetLayoutError, match="class.*G5 have no images"):
        load("sicapv2", root)
    layouts.image(root / "images" / names[0].replace("1_0_0", "9"))
    data = load("sicapv2", root)
    assert len(data) == 4 and "1 row(s) of Test.xlsx without an image name or a one-hot class" in data.notes[0]
    assert "1 of 6 rows of Test.xlsx name images absent" in data.notes[1]
    assert sicap_mask(root / "masks", names[0]).suffix == ".png"  # <stem>.png
    assert sicap_mask(root / "masks", names[1]).name == names[1]  # <image name>.jpg
    assert sicap_mask(root / "masks", "nope.jpg") is None


# ---- Osteo -------------------------------------------------------------------------------
def test_osteo_reads_tcias_csv_with_its_name_rule_labels_and_patients(tmp_path: Path) -> None:
    from pathmllm.bench.datasets.tables import load_osteo, osteo_file_stem, osteo_group

    assert osteo_file_stem("Case 48 - P5 C2-1-1") == "Case-48-P5-C2-1-1"
    assert osteo_group("Case 48 - P5 C2-1-1") == "Case 48" and osteo_group("P9 D2-1-1") == "P9"
    root = layouts.write_osteo(tmp_path / "Osteo")
    assert (root / "ML_Features_1144.csv").stat().st_size == 880_995
    data = load("osteo", root)
    assert data.classes == ["Non-Tumor", "Non-Viable-Tumor", "Viable"] and list(np.bincount(data.labels)) == [536, 263, 292]
    assert data.class_names == ["non-tumor", "non-viable necrotic osteosarcoma tumor", "viable osteosarcoma tumor"]
    assert "53 'viable: non-viable' tiles left out" in data.notes[0]
    assert set(data.groups) == {"Case 3", "Case 4", "Case 48", "P9"} and data.group_split_required
    p9 = {int(y) for y, g in zip(data.labels, data.groups) if g == "P9"}
    assert p9 == {0}  # one patient is 100 % Non-Tumor
    train, test = split_train_test(data, 0.3)
    assert not set(train.groups) & set(test.groups)
    viable = load_osteo(root, mixed="viable")
    assert len(viable) == 1144 and list(np.bincount(viable.labels)) == [536, 263, 345]


def test_osteo_rejects_the_edited_github_csv_and_a_wrong_size(tmp_path: Path) -> None:
    root = layouts.write_osteo(tmp_path / "Osteo", images_per_group=1)
    table = root / "ML_Features_1144.csv"
    original = table.read_bytes()
    table.write_bytes(b"sr_no,image_name,classification,,\r\n1,Case 3 A2-1-1,Non-Tumor,,\r\n")
    with pytest.raises(DatasetLayoutError, match="edited GitHub copy"):
        load("osteo", root)
    table.write_bytes(original.replace(b"\n", b"\r\n"))  # same content, another size
    with pytest.raises(DatasetLayoutError, match=r"not the 880,995 of TCIA's ML_Features_1144\.csv"):
        load("osteo", root)


def test_osteo_skips_absent_images_and_matches_tiff_by_stem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.write_osteo(tmp_path / "Osteo", images_per_group=2)
    jpg = next((root / "Training-Set-2").rglob("P9-*.jpg"))
    jpg.rename(jpg.with_suffix(".tiff"))  # PathDB serves .tiff
    with caplog.at_level(logging.WARNING):
        data = load("osteo", root)
    assert len(data) == 2 * 3 * 3 + 2 and any(p.endswith(".tiff") for p in data.images)
    assert "of 1091 rows of ML_Features_1144.csv name images absent" in caplog.text


# ---- SkinCancer --------------------------------------------------------------------------
def test_skincancer_splits_from_tiles_v2(tmp_path: Path) -> None:
    root = layouts.write_skincancer(tmp_path / "SkinCancer")
    test, train, valid = load("skincancer", root), load("skincancer", root, "train"), load("skincancer", root, "valid")
    assert len(test) == 16 and len(train) == 16 and len(valid) == 16 and len(test.classes) == 16
    assert all(p.endswith("_2.jpg") for p in test.images) and all(p.endswith("_3.jpg") for p in valid.images)
    assert test.class_names[test.classes.index("tumor_skin_melanoma_melanoma")] == "melanoma in-situ"
    assert test.groups[0] == "case000-0"  # the case column
    tumor = load("skincancer-tumor", root)
    assert tumor.classes == ["tumor_skin_epithelial_sqcc", "tumor_skin_melanoma_melanoma", "tumor_skin_epithelial_bcc",
                             "tumor_skin_naevus_naevus"] and len(tumor) == 4
    # 'file' is joined to the parent of data/, whichever folder is passed
    assert len(load("skincancer", root / "data")) == 16 and len(load("skincancer", tmp_path)) == 16
    tile = Path(test.images[0])
    tile.rename(tile.with_suffix(".tif"))  # a .tif tile is found by its stem
    assert load("skincancer", root).images[0].endswith(".tif")


# ---- ARCH --------------------------------------------------------------------------------
def test_arch_books_bags_rows_by_figure_and_strips_captions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.write_arch(tmp_path / "ARCH", books_missing=1)
    with caplog.at_level(logging.WARNING):
        books = load("arch-books", root)
    assert isinstance(books, CaptionSet) and len(books) == 3  # the 4th image is absent: skipped and counted
    assert "1 of 4 rows name images absent" in caplog.text and "b-3" in books.notes[0]
    assert books.texts == ["A, Granuloma. B, Giant cells.", "Squamous cell carcinoma with keratin pearls."]
    assert books.positives == [[0], [0], [1]]  # both panels of figure 00 match its caption
    assert not any("__MACOSX" in p for p in books.images)


def test_arch_pubmed_is_keyed_by_uuid_with_either_extension(tmp_path: Path) -> None:
    pubmed = load("arch-pubmed", layouts.write_arch(tmp_path / "ARCH"))
    # 4 rows, 4 images (one .png), 3 distinct captions: every uuid is its own query
    assert len(pubmed) == 4 and len(pubmed.texts) == 3 and pubmed.positives == [[0], [0], [1], [2]]
    assert [Path(p).name for p in pubmed.images] == ["p-0.jpg", "p-1.jpg", "p-2.png", "p-3.jpg"]


def test_arch_skips_absent_images_and_malformed_rows_without_crashing(tmp_path: Path) -> None:
    root = layouts.write_arch(tmp_path / "ARCH", pubmed_missing=2)
    pubmed = load("arch-pubmed", root)
    assert len(pubmed) == 2 and "2 of 4 rows name images absent" in pubmed.notes[0]
    rows = json.loads((root / "books_set/captions.json").read_text())
    rows["4"] = {"caption": "no uuid", "figure_id": "03", "letter": "Single"}
    (root / "books_set/captions.json").write_text(json.dumps(rows))
    books = load("arch-books", root)
    assert len(books) == 3 and "1 row(s) of captions.json lack figure_id, letter, caption, uuid" in books.notes[0]
    rows = {str(i): {"figure_id": str(i), "letter": "Single", "caption": f"c{i}", "uuid": f"u{i}"} for i in range(40)}
    (root / "books_set/captions.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetLayoutError, match="none of the rows of captions.json has its image"):
        load("arch-books", root)
    (root / "books_set/captions.json").write_text(json.dumps(list(rows.values())))
    with pytest.raises(DatasetLayoutError, match="must be a JSON object keyed by row index"):
        load("arch-books", root)


# ---- Quilt-VQA ---------------------------------------------------------------------------
def test_quilt_vqa_aligns_the_answers_with_the_questions_by_position(tmp_path: Path) -> None:
    data = load("quilt-vqa", layouts.write_quilt_vqa(tmp_path / "Quilt_VQA"))
    assert isinstance(data, VQASet) and len(data) == 3 and data.options is None  # 3 QA pairs on 2 images
    assert data.questions == [q for _, q, _, _ in layouts.QUILT_QA] and data.answers[1] == "No, it is a benign granuloma."
    assert data.images[0] == data.images[1] and Path(data.images[0]).parent.name == "images"
    with pytest.raises(SplitNotAvailableError, match="'train' split is the test set"):
        load("quilt-vqa", tmp_path / "Quilt_VQA", "train")


def test_quilt_vqa_reads_images_from_the_zip_or_the_parquet(tmp_path: Path) -> None:
    zipped = load("quilt-vqa", layouts.write_quilt_vqa(tmp_path / "Z", unzip=False))
    assert isinstance(zipped.images[0], ZipImage) and zipped.images[0].member == "quilt_vqa/images/frame_0.jpg"
    assert read_images(zipped.images[:1])[0].shape == (16, 16, 3)
    both = load("quilt-vqa", layouts.write_quilt_vqa(tmp_path / "P", unzip=False, parquet=True))
    assert len(both) == 3  # the JSON rows, images keyed by name (from the zip first)
    only = load("quilt-vqa", layouts.write_quilt_vqa(tmp_path / "O", unzip=False, parquet=True, json_files=False))
    assert len(only) == 2 and isinstance(only.images[0], ParquetImage)  # the parquet's rows: one per image
    (tmp_path / "O" / "quilt_vqa.zip").unlink()
    (tmp_path / "O" / "quiltvqa_test_wo_ans.jsonl").write_text((tmp_path / "P" / "quiltvqa_test_wo_ans.jsonl").read_text())
    (tmp_path / "O" / "quiltvqa_test_w_ans.json").write_text((tmp_path / "P" / "quiltvqa_test_w_ans.json").read_text())
    from_parquet = load("quilt-vqa", tmp_path / "O")
    assert len(from_parquet) == 3 and all(isinstance(i, ParquetImage) for i in from_parquet.images)
    assert read_images(from_parquet.images[2:])[0].shape == (16, 16, 3)


def test_quilt_vqa_count_mismatches_and_malformed_records(tmp_path: Path) -> None:
    root = layouts.write_quilt_vqa(tmp_path / "Q")
    (root / "quilt_vqa" / "images" / "frame_1.jpg").unlink()
    assert len(load("quilt-vqa", root)) == 3  # still in quilt_vqa.zip
    (root / "quilt_vqa.zip").unlink()
    data = load("quilt-vqa", root)
    assert len(data) == 2 and "1 of 3 questions name images absent" in data.notes[0]
    lines = (root / "quiltvqa_test_wo_ans.jsonl").read_text().splitlines()
    (root / "quiltvqa_test_wo_ans.jsonl").write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    data = load("quilt-vqa", root)
    assert len(data) == 1 and "1 record(s) without image, question or answer skipped: #0" in data.notes[0]
    (root / "quiltvqa_test_wo_ans.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DatasetLayoutError, match="has 2 records but quiltvqa_test_w_ans.json 3; they are aligned by "
                                                 "position"):
        load("quilt-vqa", root)


# ---- PathMMU -----------------------------------------------------------------------------
def test_pathmmu_strips_option_letters_and_skips_absent_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        data = load("pathmmu", layouts.write_pathmmu(tmp_path / "PathMMU"))
    assert len(data) == 5  # PubMed 2 + EduContent 1 + Atlas 1 + PathCLS 1; SocialPath's image is absent
    assert "SocialPath/test: 1 of 1 questions have no image" in caplog.text
    assert any("PathCLS/test" in n and "overlap" in n for n in data.notes)
    assert data.options is not None and data.options[0] == ["Necrosis", "Fibrosis", "Granuloma", "Carcinoma"]
    assert data.answer_index == [2, 0, 1, 3, 0] and data.answers == ["Granuloma", "Necrosis", "Fibrosis", "Carcinoma",
                                                                     "Necrosis"]
    assert len(load("pathmmu", tmp_path / "PathMMU", "val")) == 1
    assert len(load("pathmmu", tmp_path / "PathMMU", "test_tiny")) == 1
    zipped = load("pathmmu", layouts.write_pathmmu(tmp_path / "Z", zipped=True))
    assert len(zipped) == 5 and isinstance(zipped.images[0], ZipImage)


def test_pathmmu_answer_is_an_exact_option_string_and_malformed_records_are_skipped(tmp_path: Path) -> None:
    root = layouts.write_pathmmu(tmp_path / "PathMMU")
    data = json.loads((root / "data.json").read_text())
    data["PubMed"]["test"][0]["answer"] = "C"  # not the full option string
    del data["EduContent"]["test"][0]["options"]
    (root / "data.json").write_text(json.dumps(data))
    loaded = load("pathmmu", root)
    assert len(loaded) == 3
    text = "\n".join(loaded.notes)
    assert "PubMed/test: 1 malformed record(s) skipped: No 1 (answer 'C' is none of its options)" in text
    assert "EduContent/test: 1 malformed record(s) skipped: No 6 (lacks img, question, options, answer)" in text


# ---- bad input ---------------------------------------------------------------------------
def test_wrong_layouts_say_which_file_or_folder_was_expected(tmp_path: Path) -> None:
    for name, expected in (("bach", "Photos"), ("crc-100k", "CRC-VAL-HE-7K"), ("sicapv2", "partition/Test"),
                           ("osteo", "ML_Features_1144.csv"), ("skincancer", "data/tiles-v2.csv"),
                           ("arch-books", "books_set/captions.json"), ("quilt-vqa", "quiltvqa_test_w_ans.json"),
                           ("pathmmu", "data.json"), ("pcam", "camelyonpatch_level_2_split_test_x.h5"),
                           ("wsss4luad", "1.training"), ("lc25000-lung", "lung_aca")):
        folder = tmp_path / name
        layouts.image(folder / "stray" / "x.png")
        with pytest.raises(DatasetLayoutError, match=expected.replace(".", r"\.")):
            load(name, folder)


def test_a_class_with_no_images_is_named(tmp_path: Path) -> None:
    root = layouts.write_lc25000(tmp_path / "LC25000")
    shutil.rmtree(root / "lung_colon_image_set/lung_image_sets/lung_n")
    (root / "lung_colon_image_set/lung_image_sets/lung_n").mkdir()
    with pytest.raises(DatasetLayoutError, match="class 'lung_n' has no images"):
        load("lc25000-lung", root)
    crc = layouts.write_crc(tmp_path / "CRC")
    for f in (crc / "CRC-VAL-HE-7K" / "MUC").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="class 'MUC' has no images"):
        load("crc-100k", crc)


def test_missing_dataset_folder_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"none of BACH, ICIAR2018_BACH_Challenge is in .*--data bach=PATH"):
        find_dataset_root(dataset_info("bach"), tmp_path)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        find_dataset_root(dataset_info("bach"), None, tmp_path / "nope")
    with pytest.raises(KeyError, match="unknown dataset 'bachh'"):
        dataset_info("bachh")


def test_corrupt_tables_are_clear_errors(tmp_path: Path) -> None:
    root = layouts.write_arch(tmp_path / "ARCH")
    (root / "pubmed_set/captions.json").write_text("{not json")
    with pytest.raises(DatasetLayoutError, match="not valid JSON"):
        load("arch-pubmed", root)
    osteo = layouts.write_osteo(tmp_path / "Osteo", images_per_group=1)
    layouts.write_csv(osteo / "ML_Features_1144.csv", ["image", "label"], [["a", "b"]])
    with pytest.raises(DatasetLayoutError, match="lacks the column"):
        load("osteo", osteo)


# ---- the generic manifest ----------------------------------------------------------------
def test_manifests_of_each_kind(tmp_path: Path) -> None:
    for i in range(4):
        layouts.image(tmp_path / "img" / f"{i}.png")
    cls = layouts.write_csv(tmp_path / "cls.csv", ["image", "label", "split"],
                            [["img/0.png", "a", "train"], ["img/1.png", "b", "train"], ["img/2.png", "a", "test"],
                             ["img/3.png", "b", "test"]])
    info = dataset_info(f"manifest:{cls}")
    assert info.kind == "classification" and info.splits == ("train", "test")
    test = info.load(cls, "test")
    assert len(test) == 2 and test.classes == ["a", "b"]
    cap = tmp_path / "cap.jsonl"
    cap.write_text("\n".join(json.dumps(r) for r in [{"image": "img/0.png", "caption": "one"},
                                                     {"image": "img/0.png", "caption": "uno"},
                                                     {"image": "img/1.png", "caption": "one"}]))
    caps = dataset_info(f"manifest:{cap}").load(cap)
    assert isinstance(caps, CaptionSet) and caps.positives == [[0, 1], [0]]
    vqa = layouts.write_csv(tmp_path / "vqa.csv", ["image", "question", "answer", "options", "target_image"],
                            [["img/0.png", "what?", "b", '["a", "b"]', "img/2.png"],
                             ["img/1.png", "why?", "c", "a|c", "img/3.png"]])
    data = dataset_info(f"manifest:{vqa}").load(vqa)
    assert isinstance(data, VQASet) and data.answer_index == [1, 1] and data.targets[1].endswith("3.png")


def test_manifest_with_missing_images_names_the_lines(tmp_path: Path) -> None:
    layouts.image(tmp_path / "a.png")
    m = layouts.write_csv(tmp_path / "m.csv", ["image", "caption"], [["a.png", "x"], ["gone.png", "y"]])
    with pytest.raises(DatasetLayoutError, match=r"1 of 2 rows name images .*gone\.png \(line 3\)"):
        dataset_info(f"manifest:{m}").load(m)
    bad = layouts.write_csv(tmp_path / "bad.csv", ["path", "label"], [["a.png", "x"]])
    with pytest.raises(DatasetLayoutError, match="needs an 'image' column"):
        dataset_info(f"manifest:{bad}")


# ---- subsets and splits --------------------------------------------------------------------
def test_subsample_is_stratified_and_split_keeps_groups_apart(tmp_path: Path) -> None:
    root = layouts.write_lc25000(tmp_path / "LC25000", per_class=6)
    data = load("lc25000-lung", root)
    small = subsample(data, 7, seed=1)
    assert len(small) == 7 and set(np.bincount(small.labels)) == {2, 3}
    data.groups = [f"g{i // 2}" for i in range(len(data))]  # pairs of near-duplicates
    train, test = split_train_test(data, 0.34, seed=0)
    assert not set(train.groups) & set(test.groups)
    assert set(train.labels) == set(test.labels) == {0, 1, 2}
    caps = load("arch-pubmed", layouts.write_arch(tmp_path / "ARCH"))
    sub = subsample(caps, 2, seed=0)
    assert len(sub) == 2 and all(t < len(sub.texts) for p in sub.positives for t in p)
