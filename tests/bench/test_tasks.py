"""Tasks, the embedding cache, the runner and the CLIP-pair adapter with fast stand-in models;
bad models (image-only for a text task, image and text sizes that differ) fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pathmllm.bench.cache import CachedEmbedder, EmbeddingDimensionError
from pathmllm.bench.composed import ComposedRetrievalTask
from pathmllm.bench.datasets import ClassificationSet, dataset_info
from pathmllm.bench.multiple_choice import MultipleChoiceTask
from pathmllm.bench.probe import KNNTask, LinearProbeTask
from pathmllm.bench.retrieval import CrossModalRetrievalTask
from pathmllm.bench.runner import BenchConfig, run_benchmark
from pathmllm.bench.tasks import resolve_task, resolve_tasks, suite_tasks
from pathmllm.bench.zero_shot import ZeroShotClassificationTask
from pathmllm.models.embedder import ImageOnlyModelError
from tests.bench import layouts
from tests.bench.fakes import FakeEmbedder, image_key


def test_pmeb_suite_and_task_names() -> None:
    names = [t.name for t in suite_tasks("pmeb")]
    assert len(names) == 13 and names[0].startswith("zs-") and "ret-arch-books" in names and "cr-pathmmu" in names
    assert resolve_task("linear-probe:crc-100k").task_type == "linear-probe"
    assert resolve_task("zero-shot:manifest:/x/y.csv").dataset == "manifest:/x/y.csv"
    with pytest.raises(KeyError, match="unknown task 'zs-nope'"):
        resolve_task("zs-nope")
    with pytest.raises(ValueError, match="no task given"):
        resolve_tasks([], None)


def test_retrieval_with_a_perfect_model_scores_one(tmp_path: Path) -> None:
    data = dataset_info("arch-books").load(layouts.write_arch(tmp_path / "ARCH"))
    emb = FakeEmbedder()
    for img, pos in zip(data.images, data.positives):  # every caption copies one of its images' vectors
        for t in pos:
            emb.text_to.setdefault(data.texts[t], image_key(img))
    res = CrossModalRetrievalTask().run(data, emb)
    # each caption is found from its image(s); the second panel of figure 00 has its own vector, so
    # only the first panel is certain to rank the shared caption first
    assert res.metrics["t2i_R@1"] == 1.0 and res.metrics["i2t_R@5"] == 1.0 and res.n == 3


def test_composed_retrieval_and_multiple_choice_run(tmp_path: Path) -> None:
    vqa = dataset_info("pathmmu").load(layouts.write_pathmmu(tmp_path / "PathMMU"))
    emb = FakeEmbedder()
    res = ComposedRetrievalTask(target="text").run(vqa, emb)
    assert set(res.metrics) == {"R@1", "R@5", "R@10"} and res.details["gallery_size"] == 4
    assert res.metrics["R@5"] == 1.0  # gallery of 4
    assert any("SocialPath" in n for n in res.details["dataset_notes"])  # what the loader skipped is recorded
    mc = MultipleChoiceTask().run(vqa, emb)
    assert 0 <= mc.metrics["accuracy"] <= 1 and mc.n == 5
    with pytest.raises(ValueError, match="no answer options"):
        MultipleChoiceTask().run(dataset_info("quilt-vqa").load(layouts.write_quilt_vqa(tmp_path / "Q")), emb)


def test_zero_shot_warns_when_predictions_collapse(tmp_path: Path) -> None:
    data = dataset_info("lc25000-lung").load(layouts.write_lc25000(tmp_path / "LC", per_class=3))
    emb = FakeEmbedder()
    # every prompt of 'benign lung tissue' copies image 0's vector ... and so does nothing else: a weak
    # model; make all images identical to that prompt instead to force a collapse
    emb._image = lambda image: np.eye(8, dtype=np.float32)[0]  # type: ignore[method-assign]
    emb._text = lambda text: np.eye(8, dtype=np.float32)[0 if "benign" in text else 1]  # type: ignore[method-assign]
    res = ZeroShotClassificationTask().run(data, emb)
    assert res.metrics["balanced_accuracy"] == pytest.approx(1 / 3)
    assert res.warnings and "100% of the images were classified as 'lung_n'" in res.warnings[0]
    assert res.details["prediction_counts"] == {"lung_aca": 0, "lung_n": 9, "lung_scc": 0}


def test_probes_fit_on_train_and_work_with_image_only_models(tmp_path: Path) -> None:
    data = dataset_info("lc25000-lung").load(layouts.write_lc25000(tmp_path / "LC", per_class=4))
    emb = FakeEmbedder(image_only=True)
    emb._image = lambda image: np.eye(8, dtype=np.float32)[int("scc" in str(image)) + 2 * int("_n" in str(image))]  # type: ignore[method-assign]
    train = ClassificationSet("t", data.images[::2], data.labels[::2], data.classes, data.class_names)
    test = ClassificationSet("lc25000-lung", data.images[1::2], data.labels[1::2], data.classes, data.class_names)
    for task in (KNNTask(k=1), LinearProbeTask()):
        res = task.run(test, emb, train)
        assert res.metrics["accuracy"] == 1.0 and res.details["n_train"] == 6
    with pytest.raises(ImageOnlyModelError, match="image-only"):
        ZeroShotClassificationTask().run(test, emb)


def test_text_and_image_vectors_of_different_sizes_are_a_clear_error(tmp_path: Path) -> None:
    data = dataset_info("lc25000-lung").load(layouts.write_lc25000(tmp_path / "LC"))
    with pytest.raises(EmbeddingDimensionError, match="differ in size \\(8 vs 5\\)"):
        ZeroShotClassificationTask().run(data, FakeEmbedder(dim=8, text_dim=5))
    with pytest.raises(EmbeddingDimensionError, match="its text vectors are 5-d but the model says dim=8"):
        ZeroShotClassificationTask().run(data, CachedEmbedder(FakeEmbedder(dim=8, text_dim=5), None, "lc"))


def test_clip_pair_towers_must_share_one_size() -> None:
    from pathmllm.bench.clip_pair import ClipPairEmbedder, HFClipText, _tiny_hf_text, load_clip_pair
    from pathmllm.encoders.registry import build_encoder

    for name in ("tiny-open-clip", "tiny-hf-clip"):
        emb = load_clip_pair(name)
        imgs = [np.full((40, 30, 3), 100 + 40 * i, np.uint8) for i in range(3)]
        vi, vt, vp = emb.embed_images(imgs), emb.embed_texts(["a", "b c", "d"]), emb.embed_pairs(imgs, ["a", "b", "c"])
        assert vi.shape == vt.shape == vp.shape == (3, 16)
        assert np.allclose(np.linalg.norm(vt, axis=1), 1, atol=1e-5)
        assert np.allclose(np.linalg.norm(vp, axis=1), 1, atol=1e-5)
    text = _tiny_hf_text()
    small = HFClipText(text.model, text.tokenize)
    small.encode = lambda texts: text.encode(texts)[:, :8]  # type: ignore[method-assign]
    with pytest.raises(EmbeddingDimensionError, match="image tower gives 16-d vectors and the text tower 8-d"):
        ClipPairEmbedder(build_encoder("tiny-open-clip"), small)
    with pytest.raises(KeyError, match="not a CLIP-style pair"):
        load_clip_pair("handcrafted")


# ---- the cache -----------------------------------------------------------------------------
def test_cache_reuses_vectors_and_notices_changed_images(tmp_path: Path) -> None:
    paths = [str(layouts.image(tmp_path / "img" / f"{i}.png")) for i in range(5)]
    emb = FakeEmbedder()
    first = CachedEmbedder(emb, tmp_path / "cache", "d", chunk=2).embed_images(paths)
    assert emb.calls["image"] == 5
    again = CachedEmbedder(emb, tmp_path / "cache", "d", chunk=2)
    assert np.array_equal(again.embed_images(paths), first) and emb.calls["image"] == 5
    assert again.stats == {"computed": 0, "reused": 5}
    layouts.image(Path(paths[3]), size=20)  # a replaced image (new size and time) makes a new entry
    CachedEmbedder(emb, tmp_path / "cache", "d", chunk=2).embed_images(paths)
    assert emb.calls["image"] == 5 + 5
    texts = CachedEmbedder(emb, tmp_path / "cache", "d")
    texts.embed_texts(["a", "b"])
    texts.embed_texts(["a", "b"])
    assert emb.calls["text"] == 2
    other = FakeEmbedder(name="other")  # another model never sees these vectors
    CachedEmbedder(other, tmp_path / "cache", "d").embed_texts(["a", "b"])
    assert other.calls["text"] == 2


def test_cache_resumes_an_interrupted_run_at_its_last_shard(tmp_path: Path) -> None:
    paths = [str(layouts.image(tmp_path / "img" / f"{i}.png")) for i in range(6)]
    emb = FakeEmbedder()
    emb.fail_after = 4  # dies during the third shard of two
    with pytest.raises(RuntimeError, match="interrupted"):
        CachedEmbedder(emb, tmp_path / "cache", "d", chunk=2).embed_images(paths)
    emb.fail_after = None
    resumed = CachedEmbedder(emb, tmp_path / "cache", "d", chunk=2)
    out = resumed.embed_images(paths)
    assert resumed.stats == {"computed": 2, "reused": 4} and out.shape == (6, 8)
    assert np.array_equal(out, CachedEmbedder(FakeEmbedder(), None, "d").embed_images(paths))


# ---- the runner ------------------------------------------------------------------------------
def test_runner_records_errors_and_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "data"
    layouts.write_lc25000(root / "LC25000", per_class=4, groups=True)
    layouts.write_arch(root / "ARCH")
    cfg = BenchConfig(model="fake", tasks=["zs-lc25000-lung", "knn:lc25000-lung", "ret-arch-pubmed", "zs-bach"],
                      data_root=str(root), out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    run = run_benchmark(cfg, embedder=FakeEmbedder(image_only=True))
    assert set(run.errors) == {"zs-lc25000-lung", "ret-arch-pubmed", "zs-bach"}
    assert "ImageOnlyModelError" in run.errors["zs-lc25000-lung"] and "none of BACH" in run.errors["zs-bach"]
    saved = json.loads(run.results_path.read_text())
    assert saved["tasks"]["knn:lc25000-lung"]["metrics"]["accuracy"] >= 0
    assert saved["tasks"]["knn:lc25000-lung"]["details"]["n_train"] >= 3
    # a second run of another task adds to the same file and reuses cached vectors
    run2 = run_benchmark(BenchConfig(model="fake", tasks=["knn:lc25000-lung"], data_root=str(root),
                                     out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")),
                         embedder=FakeEmbedder(image_only=True))
    assert not run2.errors and run2.results["tasks"]["knn:lc25000-lung"]["cache"]["computed"] == 0
    assert "zs-bach" in json.loads(run2.results_path.read_text())["tasks"]


def test_runner_rejects_a_task_on_the_wrong_kind_of_dataset(tmp_path: Path) -> None:
    layouts.write_arch(tmp_path / "ARCH")
    run = run_benchmark(BenchConfig(model="fake", tasks=["zero-shot:arch-books"], data_root=str(tmp_path),
                                    out_dir=str(tmp_path / "out"), cache_dir=""), embedder=FakeEmbedder())
    assert "needs a classification dataset; arch-books is captions" in run.errors["zero-shot:arch-books"]


def test_probes_use_the_official_train_split_or_hold_out_part_of_the_set(tmp_path: Path) -> None:
    crc = layouts.write_crc(tmp_path / "CRC100K")
    common = {"model": "fake", "tasks": ["knn:crc-100k"], "out_dir": str(tmp_path / "out"), "cache_dir": ""}
    run = run_benchmark(BenchConfig(**common, data_paths={"crc-100k": str(crc)}), embedder=FakeEmbedder())
    entry = run.results["tasks"]["knn:crc-100k"]
    assert entry["n"] == 9 and entry["details"]["n_train"] == 18  # CRC-VAL-HE-7K vs NCT-CRC-HE-100K
    # one folder of class folders (which split is unknown): never train on the test images
    run = run_benchmark(BenchConfig(**common, data_paths={"crc-100k": str(crc / "NCT-CRC-HE-100K")}),
                        embedder=FakeEmbedder())
    entry = run.results["tasks"]["knn:crc-100k"]
    assert entry["n"] == 9 and entry["details"]["n_train"] == 9


def test_probes_never_split_lc25000_without_groups_and_split_wsss4luad_by_slide(tmp_path: Path) -> None:
    root = tmp_path / "data"
    layouts.write_lc25000(root / "LC25000", per_class=4)  # the native download has no groups
    layouts.write_wsss4luad(root / "WSSS4LUAD")
    for name in ("436223-1-1-[0, 1, 0].png", "436224-1-1-[1, 0, 0].png", "436225-1-1-[0, 0, 1].png"):
        layouts.image(root / "WSSS4LUAD" / "1.training" / name)
    run = run_benchmark(BenchConfig(model="fake", tasks=["knn:lc25000-lung", "knn:wsss4luad"], data_root=str(root),
                                    out_dir=str(tmp_path / "out"), cache_dir=""), embedder=FakeEmbedder())
    assert "GroupsRequiredError" in run.errors["knn:lc25000-lung"] and "groups.csv" in run.errors["knn:lc25000-lung"]
    # WSSS4LUAD evaluates on its train split, so the probe holds out whole slides of it instead of fitting on it
    entry = run.results["tasks"]["knn:wsss4luad"]
    assert entry["n"] + entry["details"]["n_train"] == 8


def test_zero_shot_records_the_prompt_name_map_and_accepts_another(tmp_path: Path) -> None:
    data = dataset_info("bach").load(layouts.write_bach(tmp_path / "BACH"))
    res = ZeroShotClassificationTask().run(data, FakeEmbedder())
    assert "QuiltNet" in res.details["prompt_names"] and res.details["class_names"][0] == "breast normal breast tissue"
    from pathmllm.bench.datasets.classification import BACH_PLAIN_NAMES

    res = ZeroShotClassificationTask(class_names=BACH_PLAIN_NAMES).run(data, FakeEmbedder())
    assert res.details["prompt_names"] == "the task's class_names option" and res.details["class_names"][2] == \
        "in situ carcinoma"
    with pytest.raises(ValueError, match="lacks the class"):
        ZeroShotClassificationTask(class_names={"Normal": "x"}).run(data, FakeEmbedder())
    wsss = dataset_info("wsss4luad").load(layouts.write_wsss4luad(tmp_path / "W"))
    res = ZeroShotClassificationTask().run(wsss, FakeEmbedder())
    assert res.details["dataset_notes"] and "multi-label" in res.details["dataset_notes"][0]


def test_cache_key_includes_extra_facts_such_as_the_weights(tmp_path: Path) -> None:
    emb = FakeEmbedder()
    CachedEmbedder(emb, tmp_path, "d", key_extra={"weights": ["/w.pt", 10, 1]}).embed_texts(["a"])
    CachedEmbedder(emb, tmp_path, "d", key_extra={"weights": ["/w.pt", 10, 1]}).embed_texts(["a"])
    CachedEmbedder(emb, tmp_path, "d", key_extra={"weights": ["/w.pt", 11, 2]}).embed_texts(["a"])
    assert emb.calls["text"] == 2


def test_clip_style_names_load_as_pairs_and_others_as_embedders() -> None:
    from pathmllm.bench.clip_pair import ClipPairEmbedder, is_clip_pair
    from pathmllm.bench.runner import load_bench_model

    assert is_clip_pair("open_clip:ViT-B-32") and is_clip_pair("quiltnet-b32") and not is_clip_pair("uni")
    emb = load_bench_model("tiny-hf-clip", device="cpu")
    assert isinstance(emb, ClipPairEmbedder) and emb.dim == 16 and emb.name == "tiny-hf-clip"
    assert type(load_bench_model("handcrafted", device="cpu")).__name__ == "PatchEncoderEmbedder"


def test_the_whole_pmeb_suite_runs_with_one_command(tmp_path: Path, tiny_vlm: object) -> None:
    root = tmp_path / "pmeb"
    layouts.write_wsss4luad(root / "WSSS4LUAD")
    layouts.write_lc25000(root / "LC25000")
    layouts.write_bach(root / "BACH")
    layouts.write_crc(root / "CRC100K")
    layouts.write_osteo(root / "Osteo", images_per_group=1)
    layouts.write_sicapv2(root)
    layouts.write_pcam(root / "PCam")
    layouts.write_skincancer(root / "SkinCancer")
    layouts.write_arch(root / "ARCH")
    layouts.write_quilt_vqa(root / "Quilt_VQA")
    layouts.write_pathmmu(root / "PathMMU")
    cfg = BenchConfig(model="tiny-qwen2-vl", suite="pmeb", tasks=["mc-pathmmu", "lp-pcam"], data_root=str(root),
                      out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    run = run_benchmark(cfg, embedder=tiny_vlm)
    assert not run.errors, run.errors
    tasks = run.results["tasks"]
    assert len(tasks) == 15
    assert set(tasks["ret-arch-books"]["metrics"]) >= {"i2t_R@1", "t2i_R@10", "mean_R"}
    assert tasks["cr-quilt-vqa"]["n"] == 3 and tasks["zs-pcam"]["n"] == 6
