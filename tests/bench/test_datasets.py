"""Each dataset loader on a fixture tree written in the public download's layout, and the clear
errors for folders in the wrong layout, classes without images and captions without images."""

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
    H5Image,
    VQASet,
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
            "skincancer", "arch-books", "arch-pubmed", "quilt-vqa", "pathmmu", "mhist"} <= set(DATASETS.names())
    for e in DATASETS:
        assert e.obj.url and e.obj.layout and e.obj.folders


def test_lc25000_lung_and_colon(tmp_path: Path) -> None:
    root = layouts.write_lc25000(tmp_path / "LC25000")
    lung, colon = load("lc25000-lung", root), load("lc25000-colon", root)
    assert isinstance(lung, ClassificationSet) and len(lung) == 6 and lung.classes == ["lung_aca", "lung_n", "lung_scc"]
    assert lung.class_names[1] == "benign lung tissue" and list(np.bincount(lung.labels)) == [2, 2, 2]
    assert len(colon) == 4 and colon.classes == ["colon_aca", "colon_n"]
    assert all(Path(p).parent.name == lung.classes[y] for p, y in zip(lung.images, lung.labels))
    # found under --data-root by its folder name
    assert find_dataset_root(dataset_info("lc25000-lung"), tmp_path) == root


def test_crc_uses_the_validation_set_for_evaluation_and_the_100k_set_for_training(tmp_path: Path) -> None:
    root = layouts.write_crc(tmp_path / "CRC100K")
    test, train = load("crc-100k", root), load("crc-100k", root, "train")
    assert len(test) == 9 and all("CRC-VAL-HE-7K" in p for p in test.images) and test.split == "test"
    assert len(train) == 18 and all("NCT-CRC-HE-100K" in p for p in train.images)
    assert test.classes == list(layouts.CRC)


def test_bach(tmp_path: Path) -> None:
    data = load("bach", layouts.write_bach(tmp_path / "BACH"))
    assert len(data) == 8 and data.classes == ["Normal", "Benign", "InSitu", "Invasive"]


def test_wsss4luad_keeps_single_label_training_patches(tmp_path: Path) -> None:
    data = load("wsss4luad", layouts.write_wsss4luad(tmp_path / "WSSS4LUAD"))
    assert len(data) == 5 and list(np.bincount(data.labels)) == [2, 1, 2]
    assert data.groups == ["436219", "436219", "436220", "436221", "436221"]


def test_pcam_reads_images_lazily_from_hdf5(tmp_path: Path) -> None:
    data = load("pcam", layouts.write_pcam(tmp_path / "PCam"))
    assert len(data) == 6 and isinstance(data.images[0], H5Image) and list(data.labels) == [0, 1, 0, 1, 0, 1]
    arrays = read_images([data.images[4], data.images[1]])
    import h5py

    with h5py.File(data.images[0].path) as f:
        assert np.array_equal(arrays[0], f["x"][4]) and np.array_equal(arrays[1], f["x"][1])
    with pytest.raises(DatasetLayoutError, match="camelyonpatch_level_2_split_train_x.h5"):
        load("pcam", tmp_path / "PCam", "train")


def test_pcam_points_at_gzipped_files(tmp_path: Path) -> None:
    root = layouts.write_pcam(tmp_path / "PCam")
    (root / "camelyonpatch_level_2_split_test_y.h5").rename(root / "camelyonpatch_level_2_split_test_y.h5.gz")
    with pytest.raises(DatasetLayoutError, match="gunzip it first"):
        load("pcam", root)


def test_sicapv2_reads_its_excel_partitions(tmp_path: Path) -> None:
    root = layouts.write_sicapv2(tmp_path)
    rows = read_xlsx(root / "partition/Test/Test.xlsx")
    assert rows[0]["image_name"].startswith("18B0006169") and rows[2]["G4"] == "1"
    test, train = load("sicapv2", root), load("sicapv2", root, "train")
    assert len(test) == 4 and len(train) == 4 and list(test.labels) == [0, 1, 2, 3]
    assert test.classes == ["NC", "G3", "G4", "G5"]


def test_osteo_matches_tcia_names_to_files_and_leaves_out_mixed_tiles(tmp_path: Path) -> None:
    data = load("osteo", layouts.write_osteo(tmp_path / "Osteo"))
    assert len(data) == 5 and list(np.bincount(data.labels)) == [2, 2, 1]
    assert data.classes == ["Non-Tumor", "Viable", "Non-Viable-Tumor"]


def test_skincancer_splits_from_tiles_v2(tmp_path: Path) -> None:
    root = layouts.write_skincancer(tmp_path / "SkinCancer")
    test, train = load("skincancer", root), load("skincancer", root, "train")
    assert len(test) == 16 and len(train) == 16 and len(test.classes) == 16
    assert all(p.endswith("_2.jpg") for p in test.images)


def test_mhist(tmp_path: Path) -> None:
    data = load("mhist", layouts.write_mhist(tmp_path / "MHIST"))
    assert len(data) == 2 and data.classes == ["HP", "SSA"]


def test_arch_books_links_panels_of_one_figure_to_one_caption(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = layouts.write_arch(tmp_path / "ARCH", books_missing=1)
    with caplog.at_level(logging.WARNING):
        books = load("arch-books", root)
    assert isinstance(books, CaptionSet) and len(books) == 3  # the 4th image is absent: a known gap, warned
    assert "known gap" in caplog.text
    assert books.texts == ["A, Granuloma. B, Giant cells.", "Squamous cell carcinoma with keratin pearls."]
    assert books.positives == [[0], [0], [1]]
    pubmed = load("arch-pubmed", root)
    assert len(pubmed) == 4 and len(pubmed.texts) == 3 and pubmed.positives[:2] == [[0], [0]]


def test_caption_file_with_missing_images_is_a_clear_error(tmp_path: Path) -> None:
    root = layouts.write_arch(tmp_path / "ARCH", pubmed_missing=2)
    with pytest.raises(DatasetLayoutError, match=r"2 of 4 captions name images that are not in .*pubmed_set/images"):
        load("arch-pubmed", root)
    rows = {str(i): {"figure_id": str(i), "letter": "Single", "caption": f"c{i}", "uuid": f"u{i}"} for i in range(40)}
    (root / "books_set/captions.json").write_text(json.dumps(rows))  # more absent than the public archive lacks
    with pytest.raises(DatasetLayoutError, match="40 of 40 captions"):
        load("arch-books", root)


def test_quilt_vqa(tmp_path: Path) -> None:
    data = load("quilt-vqa", layouts.write_quilt_vqa(tmp_path / "Quilt_VQA"))
    assert isinstance(data, VQASet) and len(data) == 3 and data.answers[1] == "Yes, it is a carcinoma."
    assert data.options is None


def test_pathmmu_strips_option_letters_and_skips_absent_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        data = load("pathmmu", layouts.write_pathmmu(tmp_path / "PathMMU"))
    assert len(data) == 3  # PubMed 2 + Atlas 1; SocialPath's image is absent
    assert "SocialPath/test: 1 of 1 questions have no image" in caplog.text
    assert data.options is not None and data.options[0] == ["Necrosis", "Fibrosis", "Granuloma", "Carcinoma"]
    assert data.answer_index == [3, 2, 0] and data.answers == ["Carcinoma", "Granuloma", "Necrosis"]
    assert len(load("pathmmu", tmp_path / "PathMMU", "val")) == 1


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
    osteo = layouts.write_osteo(tmp_path / "Osteo")
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
