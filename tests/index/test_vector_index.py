"""VectorIndex: exact results against NumPy, reopen, append, metadata, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("faiss")

from pathmllm.index import (  # noqa: E402
    DimensionMismatchError,
    EmptyIndexError,
    IndexParams,
    InvalidVectorsError,
    ModelMismatchError,
    NotAnIndexError,
    VectorIndex,
)


def clustered(n: int, dim: int, seed: int = 0, centers: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    return (c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def numpy_top_k(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = ((queries[:, None, :] - data[None]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    else:
        scores = queries @ data.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_search_equals_numpy(tmp_path: Path, metric: str) -> None:
    data, queries = clustered(300, 24), clustered(7, 24, seed=1)
    index = VectorIndex.create(tmp_path / "ix", dim=24, metric=metric)  # type: ignore[arg-type]
    assert list(index.add(data)) == list(range(300))
    scores, ids = index.search_ids(queries, k=5)
    ref_scores, ref_ids = numpy_top_k(data, queries, 5, metric)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert (ids == ref_ids).mean() > 0.97  # ties in float32 may swap neighbours of equal score
    hits = index.search(queries[0], k=3)
    assert [h.rank for h in hits[0]] == [0, 1, 2] and hits[0][0].id == ref_ids[0, 0]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_find_the_true_neighbours(tmp_path: Path, kind: str) -> None:
    data = clustered(2000, 32)
    index = VectorIndex.create(tmp_path / "ix", dim=32, kind=kind, params=IndexParams(nprobe=8))  # type: ignore[arg-type]
    index.add(data)
    queries = data[:50] + 0.01
    _, ids = index.search_ids(queries, k=10)
    _, ref = numpy_top_k(data, queries, 10, "cosine")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall > 0.8
    index.save()
    again = VectorIndex.open(tmp_path / "ix")
    assert again.kind == kind and np.array_equal(again.search_ids(queries, k=10)[1], ids)
    if kind == "ivf":
        assert again.params.nlist == index.params.nlist and 1 <= index.params.nlist <= 2000 // 39


def test_reopen_append_and_metadata_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "ix"
    data = clustered(40, 16)
    index = VectorIndex.create(folder, dim=16, model="enc-a")
    index.add(data[:30], [{"slide": f"s{i % 3}", "x": i * 256, "y": 0, "source": Path("a.h5")} for i in range(30)],
              model="enc-a")
    index.save()
    index = VectorIndex.open(folder)
    assert len(index) == 30 and index.dim == 16 and index.model == "enc-a" and index.metric == "cosine"
    frame = pd.DataFrame({"slide": ["t"] * 10, "x": np.arange(10), "label": ["tumour"] * 10})
    assert list(index.add(data[30:], frame)) == list(range(30, 40))
    index.save()
    index = VectorIndex.open(folder)
    assert len(index) == 40
    meta = index.metadata_frame()
    assert list(meta.columns) == ["slide", "x", "y", "source", "label"]
    assert meta.loc[3, "source"] == "a.h5" and meta.loc[3, "x"] == 768 and pd.isna(meta.loc[3, "label"])
    assert meta.loc[35, "label"] == "tumour" and pd.isna(meta.loc[35, "y"])
    hits = index.search_frame(data[[5, 35]], k=2)
    assert list(hits.columns[:4]) == ["query", "rank", "id", "score"]
    top = hits[hits["rank"] == 0]
    assert list(top["id"]) == [5, 35] and list(top["slide"]) == ["s2", "t"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 40 and manifest["dim"] == 16 and manifest["model"] == "enc-a"
    assert sorted(p.name for p in folder.iterdir()) == ["index-000003.faiss", "manifest.json",
                                                         "metadata-000003.parquet"]


def test_vectors_without_metadata_and_then_with(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=4, metric="l2")
    index.add(np.eye(4, dtype=np.float32))
    index.save()
    index = VectorIndex.open(tmp_path / "ix")
    assert len(index) == 4 and index.search(np.eye(4)[1], k=1)[0][0].metadata == {}
    index.add(np.ones((1, 4)), [{"name": "ones"}])
    hit = index.search(np.ones(4), k=1)[0][0]
    assert hit.id == 4 and hit.metadata == {"name": "ones"} and hit.score == pytest.approx(0.0)


def test_dimension_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=8, model="enc-a")
    with pytest.raises(DimensionMismatchError, match=r"dimension 12.*8-d vectors of model 'enc-a'"):
        index.add(np.ones((3, 12), np.float32))
    index.add(np.ones((3, 8), np.float32))
    with pytest.raises(DimensionMismatchError, match="query vectors have dimension 4"):
        index.search(np.ones((1, 4)), k=1)
    assert len(index) == 3  # the bad add changed nothing


def test_model_mismatch(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=8, model="enc-a")
    with pytest.raises(ModelMismatchError, match="'enc-a'.*'enc-b'"):
        index.add(np.ones((2, 8)), model="enc-b")
    index.add(np.ones((2, 8)), model="enc-a")
    with pytest.raises(ModelMismatchError):
        index.search(np.ones(8), model="enc-b")
    assert len(index.search(np.ones(8), model="enc-b", strict_model=False)[0]) == 2


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(NotAnIndexError, match="does not exist"):
        VectorIndex.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    with pytest.raises(NotAnIndexError, match="is not a pathmllm vector index.*pathmllm index build"):
        VectorIndex.open(tmp_path / "plain")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        VectorIndex.create(tmp_path / "plain", dim=4)
    (tmp_path / "plain" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(NotAnIndexError, match="not the manifest"):
        VectorIndex.open(tmp_path / "plain")
    (tmp_path / "plain" / "manifest.json").write_text("{")
    with pytest.raises(NotAnIndexError, match="not valid JSON"):
        VectorIndex.open(tmp_path / "plain")


def test_empty_index_and_k_larger_than_count(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=4)
    with pytest.raises(EmptyIndexError, match="is empty"):
        index.search(np.ones(4), k=3)
    assert len(VectorIndex.open(tmp_path / "ix")) == 0
    index.add(np.eye(4)[:3])
    hits = index.search(np.ones((2, 4)), k=50)
    assert [len(h) for h in hits] == [3, 3] and sorted(h.id for h in hits[0]) == [0, 1, 2]
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(np.ones(4), k=0)


def test_nan_inf_and_zero_vectors(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=4)
    bad = np.ones((5, 4), np.float32)
    bad[1, 2], bad[3, 0] = np.nan, np.inf
    with pytest.raises(InvalidVectorsError, match=r"2 of the vectors to add contain NaN or infinite values \(rows 1, 3\)"):
        index.add(bad)
    with pytest.raises(InvalidVectorsError, match="all zeros"):
        index.add(np.zeros((1, 4)))
    index.add(np.ones((2, 4)))
    with pytest.raises(InvalidVectorsError, match="query vectors contain NaN"):
        index.search(np.full(4, np.nan), k=1)
    assert len(index) == 2


def test_bad_metadata(tmp_path: Path) -> None:
    index = VectorIndex.create(tmp_path / "ix", dim=4)
    with pytest.raises(ValueError, match="2 metadata rows for 3 vectors"):
        index.add(np.ones((3, 4)), [{"a": 1}, {"a": 2}])
    with pytest.raises(ValueError, match="clash with search result columns"):
        index.add(np.ones((1, 4)), [{"score": 1}])
    index.add(np.ones((1, 4)), [{"a": 1}])
    with pytest.raises(ValueError, match=r"a \(int64 in the index, string in the new rows\)"):
        index.add(np.ones((1, 4)), [{"a": "text"}])
    assert len(index) == 1 and index.metadata.num_rows == 1
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex.create(tmp_path / "other", dim=4, kind="lsh")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_reserve_and_stored_vectors(tmp_path: Path, kind: str) -> None:
    data = clustered(100, 8)
    index = VectorIndex.create(tmp_path / "ix", dim=8, kind=kind)  # type: ignore[arg-type]
    index.reserve(100)
    for a in range(0, 100, 25):
        index.add(data[a:a + 25])
    stored = index.vectors(copy=kind == "ivf")
    np.testing.assert_allclose(stored, data / np.linalg.norm(data, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    scores, ids = index.search_ids(data[7], k=1)  # one query on flat: the BLAS path
    assert ids[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_killed_save_and_missing_files(tmp_path: Path) -> None:
    from pathmllm.index import CorruptIndexError

    folder = tmp_path / "ix"
    index = VectorIndex.create(folder, dim=4)
    index.add(np.eye(4), [{"n": i} for i in range(4)])
    index.save()
    # a save killed before its manifest: a new generation's file and a temporary file, ignored
    (folder / "index-000099.faiss").write_bytes(b"partial")
    (folder / ".manifest.json.tmp-abc").write_text("{")
    again = VectorIndex.open(folder)
    assert len(again) == 4 and (folder / "index-000099.faiss").exists()
    again.add(np.ones((1, 4)))
    again.save()
    assert sorted(p.name for p in folder.iterdir()) == ["index-000003.faiss", "manifest.json",
                                                         "metadata-000003.parquet"]
    (folder / "metadata-000003.parquet").unlink()
    with pytest.raises(CorruptIndexError, match="metadata-000003.parquet, named by the manifest, is missing"):
        VectorIndex.open(folder)
