"""GroundingLM: tiny Qwen2-VL + region tokens in + <SEG> masks out through a tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pathmllm.models.backbone import load_backbone
from pathmllm.models.grounding.model import (
    REGION_END,
    REGION_FEAT,
    REGION_START,
    SEG_TOKEN,
    GroundingLM,
    region_grid,
)
from pathmllm.models.grounding.seg import MaskDecoderWrapper, build_tiny_sam

H, W = 60, 84


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def _mask(top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[top : top + h, left : left + w] = True
    return m


def _model(region_mode: str = "single", region_tokens: int = 1) -> GroundingLM:
    torch.manual_seed(0)
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    sam = MaskDecoderWrapper(build_tiny_sam())
    return GroundingLM(bb, sam, region_mode=region_mode, region_tokens=region_tokens)


@pytest.fixture(scope="module")
def model() -> GroundingLM:
    return _model()


def test_tokens_added(model: GroundingLM) -> None:
    tok = model.tokenizer
    vocab = tok.get_vocab()
    for t in (REGION_START, REGION_END, REGION_FEAT, SEG_TOKEN):
        assert t in vocab
        assert tok(t, add_special_tokens=False)["input_ids"] == [vocab[t]]
    assert model.model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.seg_token_id == vocab[SEG_TOKEN]
    text = model.format_prompt("what is in <region>?", has_region=True)
    assert REGION_START + REGION_FEAT + REGION_END in text
    with pytest.raises(ValueError):
        model.format_prompt("what is in <region>?", has_region=False)


def test_region_grid_fraction() -> None:
    m = np.zeros((28, 56), dtype=bool)
    m[:, :28] = True
    g = region_grid(m, (28, 56), (1, 2))
    assert torch.allclose(g, torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError):
        region_grid(np.zeros((4, 4)), (28, 28), (1, 1))


def test_forward_region_and_seg_gradients(model: GroundingLM) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    images = [_image(0), _image(1)]
    total, terms = model(
        images,
        ["describe <region>", "segment the tumor"],
        ["a gland", f"here {SEG_TOKEN}"],
        region_masks=[_mask(10, 10, 20, 30), None],
        target_masks=[None, _mask(5, 40, 30, 30)],
    )
    assert torch.isfinite(total)
    assert torch.isfinite(terms["lm"]) and terms["lm"] > 0
    assert torch.isfinite(terms["mask"]) and terms["mask"] > 0
    total.backward()

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(model.region_encoder)
    assert has_grad(model.seg_head)
    assert has_grad(model.sam.sam.mask_decoder)
    assert all(p.grad is None for p in model.sam.sam.vision_encoder.parameters())
    model.eval()


def test_forward_plain(model: GroundingLM) -> None:
    with torch.no_grad():
        total, terms = model([_image(2)], ["what is this?"], ["tissue"])
    assert torch.isfinite(total)
    assert float(terms["mask"]) == 0.0
    assert torch.allclose(total, terms["lm"])


def test_region_mask_changes_lm_loss(model: GroundingLM) -> None:
    img = _image(3)
    with torch.no_grad():
        a, _ = model([img], ["describe <region>"], ["a gland"], region_masks=[_mask(0, 0, 20, 20)])
        b, _ = model([img], ["describe <region>"], ["a gland"], region_masks=[_mask(35, 50, 25, 34)])
    assert torch.isfinite(a) and torch.isfinite(b)
    # a tiny random LM moves little, but the region tokens must reach it
    assert abs(float(a) - float(b)) > 1e-6
    # the same mask gives the same loss, so the difference comes from the region tokens
    with torch.no_grad():
        a2, _ = model([img], ["describe <region>"], ["a gland"], region_masks=[_mask(0, 0, 20, 20)])
    assert float(a2) == float(a)


def test_multi_region_tokens() -> None:
    m = _model("multi", 3)
    assert m.format_prompt("<region>", True).count(REGION_FEAT) == 3
    with torch.no_grad():
        total, _ = m([_image(4)], ["look at <region>"], ["ok"], region_masks=[_mask(5, 5, 30, 30)])
    assert torch.isfinite(total)


def _varied(moe: bool) -> GroundingLM:
    """A tiny model whose greedy answers change with the input (random tiny weights repeat one
    token), optionally with a Mixture-of-Experts (experts made different, so routing matters)."""
    m = _model().eval()
    if moe:
        m.make_moe("all")
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in m.model.named_parameters():
            if "visual" not in name and p.ndim == 2:
                p.add_(torch.randn_like(p) * p.std() * 3)
    return m


def _greedy_by_definition(m: GroundingLM, p: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with no cache: the whole sequence through the LM at every step."""
    ids, logits = p["ids"], []
    for _ in range(n):
        types = None if p["types"] is None else torch.nn.functional.pad(p["types"], (0, ids.shape[1] - p["types"].shape[1]))
        out = m._lm(ids, torch.ones_like(ids), m._embed(ids, p["region"]), p["vision"], p["thw"], types)
        logits.append(out.logits[0, -1])
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if int(nxt) == m.tokenizer.eos_token_id:
            break
    return ids, torch.stack(logits)


@pytest.mark.parametrize("moe", [False, True])
def test_cached_generation_equals_rerunning_the_sequence(moe: bool) -> None:
    m = _varied(moe)
    answers = set()
    with torch.no_grad():
        for seed, region in [(0, _mask(5, 5, 20, 20)), (1, None), (2, _mask(30, 40, 25, 30))]:
            prompt = "describe <region>" if region is not None else "describe the image"
            p = m._prepare(_image(seed), prompt, region)
            out = m._decode(p, 12, output_logits=True, return_dict_in_generate=True)
            ref_ids, ref_logits = _greedy_by_definition(m, p, 12)
            assert torch.equal(out.sequences, ref_ids)
            torch.testing.assert_close(torch.stack(out.logits)[:, 0], ref_logits, atol=1e-4, rtol=1e-4)
            text, _ = m.generate(_image(seed), prompt, region, max_new_tokens=12)
            new = ref_ids[0, p["ids"].shape[1]:].tolist()
            new = new[:-1] if new and new[-1] == m.tokenizer.eos_token_id else new
            assert text == m.tokenizer.decode(new, skip_special_tokens=False)
            answers.add(text)
    assert len(answers) > 1  # the answers depend on the input: the comparison is not vacuous


def test_generate_and_masks(model: GroundingLM) -> None:
    img = _image(5)
    text, masks = model.generate(img, "segment <region>", region_mask=_mask(5, 5, 20, 20),
                                 max_new_tokens=4)
    assert isinstance(text, str)
    if SEG_TOKEN not in text:
        assert masks is None
    else:
        assert masks is not None and masks.dtype == torch.bool and masks.shape[1:] == (H, W)

    # both branches of the mask decoding, forced: without and with <SEG> in the sequence
    enc = model._encode(img, "segment this", has_region=False)
    ids, thw = enc["input_ids"], enc["image_grid_thw"]
    tt = enc.get("mm_token_type_ids")
    with torch.no_grad():
        vision = model.image_features(enc["pixel_values"], thw)
        assert model.masks_for_ids(img, ids, thw, vision, [None], tt) is None
        extra = torch.tensor([[model.tokenizer("here", add_special_tokens=False)["input_ids"][0], model.seg_token_id,
                               model.seg_token_id]])
        ids2 = torch.cat([ids, extra], dim=1)
        tt2 = None if tt is None else torch.cat([tt, torch.zeros_like(extra)], dim=1)
        masks = model.masks_for_ids(img, ids2, thw, vision, [None], tt2)
    assert masks is not None and masks.dtype == torch.bool and tuple(masks.shape) == (2, H, W)
