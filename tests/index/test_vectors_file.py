"""vectors.parquet: the file `pathmllm embed` writes and `pathmllm index build --vectors` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pathmllm.index.vectors_file import read_vectors, write_vectors


def test_round_trip_keeps_vectors_records_model(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    records = [{"kind": "image", "image": Path("a.png"), "label": "tumour"},
               {"kind": "text", "text": "a tumour"},
               {"kind": "pair", "image": "b.png", "text": "b", "label": np.str_("normal")}]
    path = write_vectors(tmp_path / "v.parquet", vectors, records, model="tiny-qwen2-vl")
    schema = pq.read_schema(path)
    assert schema.metadata[b"pathmllm.model"] == b"tiny-qwen2-vl" and schema.metadata[b"pathmllm.dim"] == b"5"
    assert schema.field("vector").type == pa.list_(pa.float32(), 5)
    got, frame, model = read_vectors(path)
    np.testing.assert_array_equal(got, vectors)
    assert model == "tiny-qwen2-vl" and list(frame.columns) == ["kind", "image", "text", "label"]
    assert frame["image"].isna().tolist() == [False, True, False] and frame.loc[2, "image"] == "b.png"
    assert frame.loc[0, "label"] == "tumour" and frame["label"].isna()[1] and frame.loc[2, "label"] == "normal"


def test_reads_variable_length_lists_and_rejects_ragged(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"kind": ["text", "text"], "vector": [[1.0, 2.0], [3.0, 4.0]]}), path)
    vectors, frame, model = read_vectors(path)
    assert vectors.dtype == np.float32 and vectors.shape == (2, 2) and model is None
    pq.write_table(pa.table({"kind": ["text", "text"], "vector": [[1.0, 2.0], [3.0]]}), path)
    with pytest.raises(ValueError, match="vectors differ in length"):
        read_vectors(path)
    pq.write_table(pa.table({"kind": ["text"]}), path)
    with pytest.raises(ValueError, match="no 'vector' column"):
        read_vectors(path)
    path.write_text("not parquet")
    with pytest.raises(ValueError, match="not a Parquet file"):
        read_vectors(path)
    with pytest.raises(FileNotFoundError, match="pathmllm embed"):
        read_vectors(tmp_path / "missing.parquet")


def test_write_rejects_bad_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 records for 3 vectors"):
        write_vectors(tmp_path / "v.parquet", np.zeros((3, 2)), [{"kind": "text"}] * 2, model=None)
    with pytest.raises(ValueError, match="kind 'video'"):
        write_vectors(tmp_path / "v.parquet", np.zeros((1, 2)), [{"kind": "video"}], model=None)
    assert not (tmp_path / "v.parquet").exists()
