"""Backbone loading: tiny presets of every supported family, save/load round trips, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pathmllm.models.backbone import (
    SUPPORTED_FAMILIES,
    CheckpointError,
    UnsupportedModelError,
    load_backbone,
)
from pathmllm.models.tiny import PRESETS, build_tiny, save_preset


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_preset("tiny-qwen2-vl", tmp_path_factory.mktemp("tiny-qwen2-vl"))


def test_presets_cover_every_supported_family() -> None:
    assert {p.family for p in PRESETS.values()} == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_save_and_load_round_trip(name: str, tmp_path: Path) -> None:
    folder = save_preset(name, tmp_path / name)
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    assert size_mb < 5, f"{name} is {size_mb:.1f} MB; presets must stay a few MB"
    loaded = load_backbone(folder, device="cpu")
    model, _ = build_tiny(name)
    assert loaded.family == PRESETS[name].family
    ref = model.state_dict()
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, ref[key], msg=key)
    # the checkpoint's own processor and chat template come back
    assert loaded.processor.chat_template
    assert loaded.tokenizer("lung adenocarcinoma")["input_ids"] == build_tiny(name)[1].tokenizer(
        "lung adenocarcinoma")["input_ids"]


def test_preset_is_deterministic() -> None:
    a, _ = build_tiny("tiny-qwen2-vl")
    b, _ = build_tiny("tiny-qwen2-vl")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_unsupported_architecture_lists_the_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError) as err:
        load_backbone(tmp_path, device="cpu")
    msg = str(err.value)
    assert "'bert'" in msg and all(name in msg for name in SUPPORTED_FAMILIES)


def test_folder_without_processor(qwen_folder: Path, tmp_path: Path) -> None:
    for f in qwen_folder.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="has no processor"):
        load_backbone(tmp_path, device="cpu")


def test_not_a_checkpoint_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_backbone(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="never downloads"):
        load_backbone("Qwen/Qwen2-VL-2B-Instruct", device="cpu")


def test_weights_table_name(qwen_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights.yaml").write_text(f"my-qwen: {qwen_folder}\n")
    monkeypatch.setenv("PATHMLLM_WEIGHTS", str(tmp_path))
    bb = load_backbone("my-qwen", device="cpu")
    assert bb.family == "qwen2_vl" and bb.hidden_size == 64


def test_add_embedding_token_resizes() -> None:
    bb = load_backbone("tiny-qwen2-vl", device="cpu")
    n = len(bb.tokenizer)
    (tid,) = bb.add_tokens(["<emb>"])
    assert tid == n and bb.model.get_input_embeddings().weight.shape[0] >= n + 1
    assert bb.add_tokens(["<emb>"]) == [tid]
    assert np.isfinite(bb.model.get_input_embeddings().weight.detach().numpy()).all()
