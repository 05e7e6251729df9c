"""Record files (JSONL / CSV / TSV) read by the embed, train and bench commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathmllm.data.records import read_records


def test_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"image": "x.png", "text": "t"}\n\n{"image": "y.png"}\n')
    assert read_records(tmp_path / "a.jsonl") == [{"image": "x.png", "text": "t"}, {"image": "y.png"}]
    (tmp_path / "a.csv").write_text("\ufeffimage,label\nx.png,1\n")
    assert read_records(tmp_path / "a.csv") == [{"image": "x.png", "label": "1"}]
    (tmp_path / "a.tsv").write_text("image\tlabel\nx.png\t1\n")
    assert read_records(tmp_path / "a.tsv") == [{"image": "x.png", "label": "1"}]
    (tmp_path / "a.txt").write_text('{"a": 1}\n')
    assert read_records(tmp_path / "a.txt", default=".jsonl") == [{"a": 1}]
    with pytest.raises(ValueError, match="expected a .jsonl"):
        read_records(tmp_path / "a.txt")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_records(tmp_path / "list.jsonl")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")
