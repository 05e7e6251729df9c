"""Encoder registry, local weights (lookup and errors) and parity with the upstream models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pathmllm.encoders import (
    WeightsMismatchError,
    WeightsNotFoundError,
    build_encoder,
    list_encoders,
)
from pathmllm.encoders.registry import encoder_spec
from pathmllm.encoders.weights import load_state_dict

IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["tiny-timm-vit", "tiny-timm-cnn", "tiny-hf-dinov2", "tiny-hf-clip", "tiny-open-clip", "handcrafted"])
def test_tiny_presets_embed(name: str) -> None:
    enc = build_encoder(name)
    with torch.inference_mode():
        out = enc(enc.preprocess(IMAGES))
    assert out.shape == (3, enc.embed_dim) and torch.isfinite(out).all()
    again = build_encoder(name)
    with torch.inference_mode():
        assert torch.equal(out, again(again.preprocess(IMAGES)))  # random presets are seeded


def test_registry_lists_the_field_s_encoders() -> None:
    names = {r["name"] for r in list_encoders()}
    assert {"uni", "uni2-h", "virchow2", "gigapath", "h-optimus-0", "phikon", "plip", "quiltnet-b32",
            "hf-dinov2", "hf-siglip", "handcrafted", "resnet50-trunc"} <= names
    spec, _ = encoder_spec("virchow2")
    assert spec.embed_dim == 2560 and spec.licence == "CC-BY-NC-ND-4.0" and spec.mpp == 0.5


def test_real_encoder_without_weights_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATHMLLM_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"'uni' needs local weights.*--weights.*MahmoodLab/UNI.*never downloads"):
        build_encoder("uni")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_encoder("uni", weights="/nonexistent/uni.bin")


def test_timm_parity_and_weights_dir_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    ref = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "w.pth")
    (tmp_path / "weights.yaml").write_text("timm:test_vit: w.pth\n")
    monkeypatch.setenv("PATHMLLM_WEIGHTS", str(tmp_path))
    enc = build_encoder("timm:test_vit")  # found through the mapping file; DDP prefixes stripped
    x = enc.preprocess(IMAGES)
    with torch.inference_mode():
        np.testing.assert_allclose(enc(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)


def test_hf_parity_from_a_save_pretrained_folder(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16)
    torch.manual_seed(1)
    ref = Dinov2Model(cfg).eval()
    ref.save_pretrained(tmp_path / "dino")
    enc = build_encoder("hf-dinov2", weights=tmp_path / "dino")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(enc(x).numpy(), ref(pixel_values=x).last_hidden_state[:, 0].numpy(), atol=1e-6)


def test_open_clip_parity(tmp_path: Path) -> None:
    base = build_encoder("tiny-open-clip")
    torch.save(base.model.state_dict(), tmp_path / "clip.bin")
    enc = build_encoder("tiny-open-clip", weights=tmp_path / "clip.bin")
    x = enc.preprocess(IMAGES)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), base.model.encode_image(x))


def test_mismatched_and_corrupt_checkpoints(tmp_path: Path) -> None:
    import timm

    vit = timm.create_model("test_vit", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(WeightsMismatchError, match=r"does not fit .*missing keys.*unexpected keys"):
        build_encoder("timm:test_resnet", weights=tmp_path / "vit.pth")
    bad = dict(vit.state_dict())
    bad["pos_embed"] = torch.zeros(1, 5, 64)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsMismatchError, match=r"shape mismatches \(pos_embed: checkpoint \(1, 5, 64\)"):
        build_encoder("timm:test_vit", weights=tmp_path / "bad.pth")
    (tmp_path / "junk.bin").write_text("not a checkpoint")
    with pytest.raises(WeightsMismatchError, match="cannot read it as a checkpoint"):
        load_state_dict(tmp_path / "junk.bin")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no checkpoint file in this folder"):
        build_encoder("timm:test_vit", weights=tmp_path / "empty_dir")
    (tmp_path / "no_config").mkdir()
    with pytest.raises(WeightsNotFoundError, match="not a Hugging Face model folder"):
        build_encoder("hf-dinov2", weights=tmp_path / "no_config")


def test_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown encoder 'unii'"):
        build_encoder("unii")
    with pytest.raises(KeyError, match="timm has no architecture"):
        build_encoder("timm:not_a_model")


def test_preprocess_resizes_and_normalises() -> None:
    enc = build_encoder("tiny-hf-clip")
    x = enc.preprocess(np.full((1, 128, 128, 3), 255, np.uint8))
    assert x.shape == (1, 3, 64, 64)
    expected = (1 - torch.tensor(enc.spec.mean)) / torch.tensor(enc.spec.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected)
    with pytest.raises(ValueError, match=r"expected images \(B, H, W, 3\)"):
        enc.preprocess(np.zeros((1, 3, 64, 64), np.uint8))


@pytest.mark.data
def test_handcrafted_separates_real_tissue_types() -> None:
    from PIL import Image

    from pathmllm.encoders.handcrafted import FEATURE_NAMES
    from tests.conftest import shared

    folder = shared("tiles", "nct-crc-9")
    tiles = {p.stem.split("-")[0]: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.tif"))}
    enc = build_encoder("handcrafted")
    with torch.inference_mode():
        f = enc(enc.preprocess(np.stack([tiles["LYM"], tiles["ADI"], tiles["BACK"]]))).numpy()
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    lym, adi, back = f
    assert lym[col["hematoxylin_mean"]] > adi[col["hematoxylin_mean"]]  # lymphocytes: dense nuclei
    assert lym[col["nuclei_per_100um2px"]] > adi[col["nuclei_per_100um2px"]]
    assert back[col["saturation_mean"]] < lym[col["saturation_mean"]]
