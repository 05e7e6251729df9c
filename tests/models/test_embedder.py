"""Universal embedder: last-token parity under both paddings, templates, <emb> token, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathmllm.models.backbone import load_backbone
from pathmllm.models.embedder import (
    ImageOnlyModelError,
    ImageReadError,
    PromptTemplates,
    UniversalEmbedder,
    last_token_pool,
    load_embedder,
)

RNG = np.random.default_rng(0)
IMAGES = [Image.fromarray((RNG.random((h, w, 3)) * 255).astype("uint8")) for h, w in
          ((224, 224), (90, 140), (160, 100), (224, 224), (60, 60))]
TEXTS = ["lung adenocarcinoma", "benign lung tissue with alveoli",
         "squamous cell carcinoma with keratin pearls and many more words than the others", "x", "stroma"]


def reference_vector(emb: UniversalEmbedder, kind: str, image: Image.Image | None, text: str | None) -> np.ndarray:
    """Independent path: one example alone, no padding, full model with output_hidden_states, last position."""
    prompt = emb.prompt(kind, text)  # type: ignore[arg-type]
    proc = emb.backbone.processor
    inputs = proc(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
    assert inputs["attention_mask"].all()
    with torch.no_grad():
        out = emb.backbone.model(**inputs, output_hidden_states=True)
    v = out.hidden_states[-1][0, -1].float()
    return (v / v.norm()).numpy()


@pytest.mark.parametrize("preset", ["tiny-qwen2-vl", "tiny-llava"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", ["image", "text", "pair"])
def test_batched_equals_single_example_forward(preset: str, side: str, kind: str) -> None:
    emb = UniversalEmbedder(load_backbone(preset, device="cpu"), padding_side=side, batch_size=8)  # type: ignore[arg-type]
    if kind == "image":
        got = emb.embed_images(IMAGES)
    elif kind == "text":
        got = emb.embed_texts(TEXTS)
    else:
        got = emb.embed_pairs(IMAGES, TEXTS)
    assert got.shape == (5, 64) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for i in range(5):
        ref = reference_vector(emb, kind, IMAGES[i] if kind != "text" else None, TEXTS[i] if kind != "image" else None)
        np.testing.assert_allclose(got[i], ref, atol=2e-5, err_msg=f"{preset} {side} {kind} item {i}")
    # vectors carry information: distinct inputs give distinct vectors
    assert np.abs(got[0] - got[2]).max() > 1e-3


def test_order_and_batch_size_do_not_change_vectors() -> None:
    emb = load_embedder("tiny-qwen2-vl", device="cpu")
    a = emb.embed_pairs(IMAGES, TEXTS, batch_size=2)
    b = emb.embed_pairs(IMAGES[::-1], TEXTS[::-1], batch_size=5)[::-1]
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_last_token_pool_left_and_right() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_templates_and_embedding_token() -> None:
    templates = PromptTemplates(embed_token="<emb>")
    emb = load_embedder("tiny-qwen2-vl", device="cpu", templates=templates)
    prompt = emb.prompt("pair", "tumour")
    assert prompt.endswith("<emb>") and "tumour" in prompt and "<|image_pad|>" in prompt
    assert "Summarize above image and sentence in one word:" in prompt
    tok = emb.backbone.tokenizer
    inputs = emb.build_inputs("text", texts=["tumour"])
    assert inputs["input_ids"][0, -1].item() == tok.convert_tokens_to_ids("<emb>")
    v = emb.embed_texts(["tumour"])
    np.testing.assert_allclose(v[0], reference_vector(emb, "text", None, "tumour"), atol=2e-5)
    plain = load_embedder("tiny-qwen2-vl", device="cpu").prompt("text", "tumour")
    assert "<emb>" not in plain and plain.rstrip().endswith("assistant")
    with pytest.raises(ValueError, match="exactly once"):
        UniversalEmbedder(emb.backbone, PromptTemplates(image="no marker")).prompt("image")


def test_bad_inputs(tmp_path: Path) -> None:
    emb = load_embedder("tiny-qwen2-vl", device="cpu")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="0 bytes"):
        emb.embed_images([empty])
    with pytest.raises(ImageReadError, match="not a readable image"):
        emb.embed_images([junk])
    with pytest.raises(ImageReadError, match="no such image"):
        emb.embed_images([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="text 1 is empty"):
        emb.embed_texts(["fine", "   "])
    with pytest.raises(ValueError, match="as many texts as images"):
        emb.embed_pairs(IMAGES[:2], TEXTS[:1])
    assert emb.embed_texts([]).shape == (0, 64)


def test_image_only_model_asked_for_text() -> None:
    emb = load_embedder("handcrafted", device="cpu")
    v = emb.embed_images(IMAGES[:2])
    assert v.shape[0] == 2 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    with pytest.raises(ImageOnlyModelError, match="image-only"):
        emb.embed_texts(["tumour"])
    with pytest.raises(ImageOnlyModelError, match="image-only"):
        emb.embed_pairs(IMAGES[:1], ["tumour"])
