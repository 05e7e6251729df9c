"""``pathmllm embed images|texts|pairs``, the ``mllm:`` patch encoder, and ``models ls``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pathmllm.cli.main import app
from pathmllm.index.vectors_file import read_vectors
from pathmllm.models.embedder import load_embedder
from tests.conftest import shared

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def tiles() -> list[Path]:
    root = shared("tiles", "lc25000-lung")
    return [sorted((root / c).glob("*.jpeg"))[0] for c in ("lung_aca", "lung_n", "lung_scc")]


def test_embed_images_texts_pairs(tiles: list[Path], tmp_path: Path) -> None:
    emb = load_embedder("tiny-qwen2-vl", device="cpu")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for t in tiles:
        (folder / t.name).write_bytes(t.read_bytes())
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "img.parquet"
    res = runner.invoke(app, ["embed", "images", str(folder), "-m", "tiny-qwen2-vl", "-o", str(out)])
    assert res.exit_code == 1, res.output  # one unreadable file: reported, the rest written
    assert "empty.png" in res.output and "0 bytes" in res.output
    vectors, records, model = read_vectors(out)
    assert model == "tiny-qwen2-vl" and vectors.shape == (3, 64) and set(records["kind"]) == {"image"}
    want = emb.embed_images([folder / Path(p).name for p in records["image"]])
    np.testing.assert_allclose(vectors, want, atol=1e-5)

    texts = tmp_path / "texts.txt"
    texts.write_text("lung adenocarcinoma\n\nbenign lung tissue\n")
    res = runner.invoke(app, ["embed", "texts", "--file", str(texts), "squamous", "-m", "tiny-qwen2-vl",
                              "-o", str(tmp_path / "t.parquet")])
    assert res.exit_code == 0, res.output
    vectors, records, _ = read_vectors(tmp_path / "t.parquet")
    assert list(records["text"]) == ["squamous", "lung adenocarcinoma", "benign lung tissue"]
    np.testing.assert_allclose(vectors, emb.embed_texts(list(records["text"])), atol=1e-5)

    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(t), "text": f"tile {i}", "label": i}) + "\n"
                                for i, t in enumerate(tiles)))
    res = runner.invoke(app, ["embed", "pairs", str(manifest), "-m", "tiny-qwen2-vl", "-o", str(tmp_path / "p.parquet")])
    assert res.exit_code == 0, res.output
    vectors, records, _ = read_vectors(tmp_path / "p.parquet")
    assert list(records["label"]) == [0, 1, 2]
    np.testing.assert_allclose(vectors, emb.embed_pairs(tiles, ["tile 0", "tile 1", "tile 2"]), atol=1e-5)
    assert isinstance(pd.read_parquet(tmp_path / "p.parquet"), pd.DataFrame)


def test_embed_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["embed", "texts", "", "-m", "tiny-qwen2-vl", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and "text 0 is empty" in res.output
    res = runner.invoke(app, ["embed", "texts", "hi", "-m", "handcrafted", "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and "image-only" in res.output
    res = runner.invoke(app, ["embed", "texts", "hi", "-m", str(tmp_path), "-o", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2 and "no config.json" in res.output
    res = runner.invoke(app, ["embed", "images", str(tmp_path / "nope"), "-m", "tiny-qwen2-vl", "-o", "x.parquet"])
    assert res.exit_code == 2 and "no such file" in res.output
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"image": "a.png"}\n')
    res = runner.invoke(app, ["embed", "pairs", str(bad), "-m", "tiny-qwen2-vl", "-o", "x.parquet"])
    assert res.exit_code == 2 and "needs both 'image' and 'text'" in res.output
    assert not (tmp_path / "x.parquet").exists()


def test_mllm_patch_encoder_equals_embedder() -> None:
    from pathmllm.encoders.registry import build_encoder

    enc = build_encoder("mllm:tiny-llava")
    assert enc.embed_dim == 64 and enc.spec.family == "mllm"
    x = (np.random.default_rng(0).random((3, 224, 224, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        got = enc(enc.preprocess(x)).numpy()
    np.testing.assert_allclose(got, load_embedder("tiny-llava", device="cpu").embed_images(list(x)), atol=1e-5)


def test_models_ls_lists_vlms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathmllm.models.tiny import save_preset

    save_preset("tiny-llava", tmp_path / "llava")
    (tmp_path / "weights.yaml").write_text("my-llava: llava\n")
    monkeypatch.setenv("PATHMLLM_WEIGHTS", str(tmp_path))
    res = runner.invoke(app, ["models", "ls", "--json"])
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["tiny-qwen2-vl"]["kind"] == "vlm" and rows["my-llava"]["family"].startswith("LLaVA")
    assert rows["handcrafted"]["weights"] == "not needed"
