"""`pathmllm index build` and `pathmllm index search` from features files, vectors files, and
(with the universal embedder) images and texts."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")

from pathmllm.cli.main import app  # noqa: E402
from pathmllm.index import VectorIndex, write_vectors  # noqa: E402

runner = CliRunner(env={"COLUMNS": "200"})


def features_file(path: Path, feats: np.ndarray, coords: np.ndarray, name: str | None, encoder: str = "enc") -> Path:
    """The layout of ``write_features_h5`` (pathmllm slide features / TRIDENT); CLAM files have no attrs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("features", data=feats.astype(np.float32))
        c = f.create_dataset("coords", data=coords.astype(np.int64))
        if name is not None:
            d.attrs.update({"name": name, "savetodir": str(path.parent), "encoder": encoder})
            c.attrs.update({"name": name, "patch_size_level0": 512, "patch_size": 256})
    return path


@pytest.fixture
def slide_features(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((30, 16)).astype(np.float32)
    coords = np.stack([np.arange(30) * 512, np.zeros(30)], axis=1)
    root = tmp_path / "slides_out"
    features_file(root / "slideA" / "20x_256px" / "features_enc.h5", feats[:20], coords[:20], "slideA")
    features_file(root / "slideB" / "20x_256px" / "features_enc.h5", feats[20:], coords[20:], "slideB")
    (root / "slideA" / "20x_256px" / "coords.h5").write_bytes(b"")  # not a features file: never read
    return root, feats


def test_build_from_features_folder_then_search_by_vector(tmp_path: Path, slide_features: tuple[Path, np.ndarray]) -> None:
    root, feats = slide_features
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "build", str(out), "--features", str(root), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["created"] and info["count"] == 30 and info["dim"] == 16 and info["model"] == "enc"
    np.save(tmp_path / "q.npy", feats[[3, 25]])
    res = runner.invoke(app, ["index", "search", str(out), "--vector-file", str(tmp_path / "q.npy"), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["hits"]
    top = [h for h in hits if h["rank"] == 0]
    assert [(h["slide"], h["x"], h["y"], h["id"]) for h in top] == [("slideA", 1536, 0, 3), ("slideB", 12800, 0, 25)]
    assert top[0]["source"].endswith("features_enc.h5") and top[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert top[0]["patch_size_level0"] == 512
    res = runner.invoke(app, ["index", "search", str(out), "--vector-file", str(tmp_path / "q.npy"), "-k", "2"])
    assert res.exit_code == 0 and "slideA" in res.output and "query 1" in res.output


def test_clam_and_embed_patches_files_and_append(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    clam = features_file(tmp_path / "h5_files" / "slideC.h5", rng.standard_normal((5, 8)),
                         np.arange(10).reshape(5, 2), None)
    patches = tmp_path / "embeddings_enc.h5"
    with h5py.File(patches, "w") as f:
        f.create_dataset("features", data=rng.standard_normal((4, 8)).astype(np.float32)).attrs.update(
            {"encoder": "enc", "folder": "/data/patches"})
        f.create_dataset("paths", data=np.array([f"p{i}.png" for i in range(4)], dtype=object),
                         dtype=h5py.string_dtype())
    out = tmp_path / "ix"
    assert runner.invoke(app, ["index", "build", str(out), "-f", str(clam), "--kind", "hnsw"]).exit_code == 0
    res = runner.invoke(app, ["index", "build", str(out), "-f", str(patches)])
    assert res.exit_code == 0 and "appended to" in res.output, res.output
    index = VectorIndex.open(out)
    meta = index.metadata_frame()
    assert len(index) == 9 and index.kind == "hnsw" and index.model == "enc"
    assert meta.loc[0, "slide"] == "slideC" and meta.loc[4, "x"] == 8
    assert meta.loc[5, "path"] == "/data/patches/p0.png" and meta["slide"].isna()[5]
    res = runner.invoke(app, ["index", "build", str(out), "-f", str(patches), "--kind", "flat"])
    assert res.exit_code == 2 and "kind='hnsw' index" in res.output


def test_build_from_vectors_parquet_search_to_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((6, 12)).astype(np.float32)
    records = [{"kind": "image", "image": f"img{i}.png"} for i in range(3)] + \
              [{"kind": "text", "text": f"caption {i}"} for i in range(3)]
    vfile = write_vectors(tmp_path / "vectors.parquet", vecs, records, model="tiny-qwen2-vl")
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "build", str(out), "--vectors", str(vfile), "--kind", "ivf"])
    assert res.exit_code == 0, res.output
    assert VectorIndex.open(out).model == "tiny-qwen2-vl"
    qfile = write_vectors(tmp_path / "q.parquet", vecs[[4]], [records[4]], model="tiny-qwen2-vl")
    csv = tmp_path / "hits.csv"
    res = runner.invoke(app, ["index", "search", str(out), "--vector-file", str(qfile), "-k", "10", "--out", str(csv)])
    assert res.exit_code == 0, res.output
    hits = pd.read_csv(csv)
    assert len(hits) == 6 and hits.loc[0, "text"] == "caption 1" and hits.loc[0, "kind"] == "text"
    other = write_vectors(tmp_path / "other.parquet", vecs[:1], records[:1], model="another-model")
    res = runner.invoke(app, ["index", "search", str(out), "--vector-file", str(other)])
    assert res.exit_code == 2 and "'tiny-qwen2-vl'" in res.output and "'another-model'" in res.output


def test_cli_bad_inputs(tmp_path: Path, slide_features: tuple[Path, np.ndarray]) -> None:
    root, _ = slide_features
    res = runner.invoke(app, ["index", "search", str(tmp_path / "nothing"), "--text", "x"])
    assert res.exit_code == 2 and "not a pathmllm vector index" in res.output
    out = tmp_path / "ix"
    assert runner.invoke(app, ["index", "build", str(out), "-f", str(root)]).exit_code == 0
    np.save(tmp_path / "q.npy", np.ones((1, 10), np.float32))
    res = runner.invoke(app, ["index", "search", str(out), "--vector-file", str(tmp_path / "q.npy")])
    assert res.exit_code == 2 and "dimension 10" in res.output and "16-d" in res.output
    other = features_file(tmp_path / "wide" / "features_enc.h5", np.ones((2, 32)), np.zeros((2, 2)), "w")
    res = runner.invoke(app, ["index", "build", str(out), "-f", str(other)])
    assert res.exit_code == 2 and "dimension 32" in res.output
    res = runner.invoke(app, ["index", "build", str(out)])
    assert res.exit_code == 2 and "nothing to index" in res.output
    res = runner.invoke(app, ["index", "search", str(out)])
    assert res.exit_code == 2 and "no query" in res.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    res = runner.invoke(app, ["index", "build", str(tmp_path / "taken"), "-f", str(root)])
    assert res.exit_code == 2 and "not an empty folder" in res.output
    assert len(VectorIndex.open(out)) == 30


def test_build_and_search_images_and_texts(tmp_path: Path) -> None:
    pytest.importorskip("pathmllm.models.embedder")
    pytest.importorskip("transformers")
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    texts = tmp_path / "texts.txt"
    texts.write_text("tumour cells\n\nnormal mucosa\n")
    out = tmp_path / "ix"
    res = runner.invoke(app, ["index", "build", str(out), "--images", str(images), "--texts", str(texts),
                              "--model", "tiny-qwen2-vl", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["count"] == 5 and info["model"] == "tiny-qwen2-vl"
    meta = VectorIndex.open(out).metadata_frame()
    assert meta["kind"].tolist() == ["image"] * 3 + ["text"] * 2 and meta.loc[4, "text"] == "normal mucosa"
    res = runner.invoke(app, ["index", "search", str(out), "--text", "normal mucosa", "-k", "1", "--json",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert found["hits"][0]["id"] == 4 and found["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    res = runner.invoke(app, ["index", "search", str(out), "--image", str(images / "im1.png"), "-k", "1", "--json",
                              "--device", "cpu"])
    assert res.exit_code == 0 and json.loads(res.stdout)["hits"][0]["id"] == 1, res.output
    res = runner.invoke(app, ["index", "search", str(out), "--image", str(images / "im1.png"), "--text", "tumour",
                              "-k", "2", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["queries"][0]["kind"] == "pair"
