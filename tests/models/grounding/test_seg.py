"""[SEG] grounding: mask losses vs hand formulas, [SEG] gathering, SegHead and a tiny real SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pathmllm.losses import dice_loss, mask_loss, sigmoid_bce_loss
from pathmllm.models.grounding.region import pad_geometry, resize_longest_side
from pathmllm.models.grounding.seg import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    MaskDecoderWrapper,
    SegHead,
    build_tiny_sam,
    gather_seg_hidden,
    load_sam,
    predict_masks,
    seg_positions,
)

SEG = 99


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _np_dice(logits: np.ndarray, targets: np.ndarray, smooth: float) -> float:
    """1 - (2 Σσt + smooth) / (Σσ + Σt + smooth) per mask, mean over masks (float64)."""
    out = []
    for lg, t in zip(logits, targets):
        p = _sigmoid(lg.astype(np.float64)).ravel()
        t = t.astype(np.float64).ravel()
        out.append(1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
    return float(np.mean(out))


def _np_bce(logits: np.ndarray, targets: np.ndarray) -> float:
    per_mask = []
    for lg, t in zip(logits, targets):
        p = _sigmoid(lg.astype(np.float64))
        per_mask.append(float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))))
    return float(np.mean(per_mask))


@pytest.fixture()
def small_masks() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(3, 5, 4, generator=g) > 0.5).double()
    return logits, targets


# --------------------------------------------------------------------------------------------
# losses


def test_dice_loss_matches_hand_formula(small_masks):
    logits, targets = small_masks
    # LISA's defaults scale=1000, eps=1e-6 are a smoothing of eps*scale = 1e-3
    got = dice_loss(logits, targets).item()
    assert got == pytest.approx(_np_dice(logits.numpy(), targets.numpy(), 1e-3), rel=1e-9)
    got1 = dice_loss(logits, targets, eps=1.0, scale=1.0).item()
    assert got1 == pytest.approx(_np_dice(logits.numpy(), targets.numpy(), 1.0), rel=1e-9)
    # MedPLIB's variant: no scale, eps 1e-6
    got2 = dice_loss(logits, targets, eps=1e-6, scale=1.0).item()
    assert got2 == pytest.approx(_np_dice(logits.numpy(), targets.numpy(), 1e-6), rel=1e-9)


def test_dice_loss_of_a_perfect_prediction_is_near_zero():
    t = torch.zeros(2, 8, 8)
    t[0, 2:6, 2:6] = 1
    t[1, :3, :] = 1
    logits = (t * 2 - 1) * 30.0
    assert dice_loss(logits, t).item() < 1e-6
    assert dice_loss(-logits, t).item() > 0.99


def test_sigmoid_bce_matches_hand_formula(small_masks):
    logits, targets = small_masks
    got = sigmoid_bce_loss(logits, targets).item()
    assert got == pytest.approx(_np_bce(logits.numpy(), targets.numpy()), rel=1e-9)


def test_mask_loss_weights_and_list_input(small_masks):
    logits, targets = small_masks
    total, terms = mask_loss(logits, targets, bce_weight=2.0, dice_weight=0.5)
    ref_bce = _np_bce(logits.numpy(), targets.numpy())
    ref_dice = _np_dice(logits.numpy(), targets.numpy(), 1e-3)
    assert terms["bce"].item() == pytest.approx(ref_bce, rel=1e-9)
    assert terms["dice"].item() == pytest.approx(ref_dice, rel=1e-9)
    assert total.item() == pytest.approx(2.0 * ref_bce + 0.5 * ref_dice, rel=1e-9)
    # per-image lists at different sizes: mean over all masks, empty images skipped
    g = torch.Generator().manual_seed(1)
    other = torch.randn(1, 7, 3, generator=g, dtype=torch.float64)
    other_t = (torch.rand(1, 7, 3, generator=g) > 0.5).double()
    empty = torch.zeros(0, 6, 6, dtype=torch.float64)
    total2, terms2 = mask_loss([logits, empty, other], [targets, empty.clone(), other_t])
    per_mask_bce = [
        _np_bce(logits[i : i + 1].numpy(), targets[i : i + 1].numpy()) for i in range(3)
    ]
    per_mask_bce.append(_np_bce(other.numpy(), other_t.numpy()))
    assert terms2["bce"].item() == pytest.approx(np.mean(per_mask_bce), rel=1e-9)
    assert total2.item() == pytest.approx(terms2["bce"].item() + terms2["dice"].item(), rel=1e-9)


def test_mask_loss_with_zero_masks():
    logits = torch.zeros(0, 8, 8, requires_grad=True)
    total, terms = mask_loss(logits, torch.zeros(0, 8, 8))
    assert total.item() == 0.0 and terms["bce"].item() == 0.0 and terms["dice"].item() == 0.0
    assert total.grad_fn is not None
    total.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 8, 8)
    plain, _ = mask_loss(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4))
    assert plain.item() == 0.0 and plain.grad_fn is None
    assert mask_loss([], [])[0].item() == 0.0
    assert dice_loss(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3)).item() == 0.0


def test_mask_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        mask_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="2 logit tensors but 1"):
        mask_loss([torch.zeros(1, 4, 4)] * 2, [torch.zeros(1, 4, 4)])


# --------------------------------------------------------------------------------------------
# [SEG] positions


def test_seg_positions_and_hidden_on_a_hand_built_batch():
    input_ids = torch.tensor(
        [
            [1, 5, SEG, 7, SEG, 2],
            [1, 5, 6, 7, 8, 2],  # no [SEG] → no mask
            [1, SEG, 0, 0, 0, 0],
        ]
    )
    hidden = torch.arange(3 * 6, dtype=torch.float32).view(3, 6, 1).repeat(1, 1, 4)
    hidden[..., 1] += 1000  # make the columns differ
    tok = seg_positions(input_ids, SEG, source="token")
    assert [p.tolist() for p in tok] == [[2, 4], [], [1]]
    assert all(p.dtype == torch.long for p in tok)
    pred = seg_positions(input_ids, SEG, source="predictor")
    assert [p.tolist() for p in pred] == [[1, 3], [], [0]]

    got = gather_seg_hidden(hidden, input_ids, SEG, source="token")
    assert [tuple(g.shape) for g in got] == [(2, 4), (0, 4), (1, 4)]
    torch.testing.assert_close(got[0], torch.stack([hidden[0, 2], hidden[0, 4]]))
    torch.testing.assert_close(got[2], hidden[2, 1:2])
    # LISA's mask: input_ids[:, 1:] == SEG, padded by one False at the end
    lisa_mask = torch.cat([input_ids[:, 1:] == SEG, torch.zeros(3, 1, dtype=torch.bool)], dim=1)
    lisa = hidden[lisa_mask]
    got_pred = torch.cat(gather_seg_hidden(hidden, input_ids, SEG, source="predictor"))
    torch.testing.assert_close(got_pred, lisa)


def test_seg_positions_errors():
    with pytest.raises(ValueError, match="position 0"):
        seg_positions(torch.tensor([[SEG, 1]]), SEG, source="predictor")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        seg_positions(torch.tensor([SEG, 1]), SEG)
    with pytest.raises(ValueError, match="must be"):
        gather_seg_hidden(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long), SEG)


# --------------------------------------------------------------------------------------------
# SegHead


def test_seg_head_shapes_and_gradient():
    torch.manual_seed(0)
    head = SegHead(16, 32)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "ReLU", "Linear", "Dropout"]
    x = torch.randn(3, 16, requires_grad=True)
    out = head(x)
    assert out.shape == (3, 1, 32)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())
    assert head(torch.zeros(0, 16)).shape == (0, 1, 32)
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        head(torch.zeros(2, 8))


# --------------------------------------------------------------------------------------------
# tiny SAM


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(seed=0, image_size=64)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, size=(50, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(64, 40, 3), dtype=np.uint8),
    ]


def test_tiny_sam_config(tiny_sam):
    cfg = tiny_sam.config
    assert cfg.vision_config.hidden_size == 32 and cfg.vision_config.num_hidden_layers == 2
    assert cfg.mask_decoder_config.hidden_size == 32 and cfg.prompt_encoder_config.hidden_size == 32
    assert cfg.prompt_encoder_config.image_embedding_size == 8
    assert next(tiny_sam.parameters()).dtype == torch.float32
    a, b = build_tiny_sam(seed=0), build_tiny_sam(seed=1)
    assert torch.equal(a.mask_decoder.iou_token.weight, tiny_sam.mask_decoder.iou_token.weight)
    assert not torch.equal(a.mask_decoder.iou_token.weight, b.mask_decoder.iou_token.weight)


def test_preprocess_geometry_and_normalisation(tiny_sam):
    wrapper = MaskDecoderWrapper(tiny_sam)
    img = np.full((50, 80, 3), 200, dtype=np.uint8)
    pv, geo = wrapper.preprocess([img, img[:, :, 0]])
    assert pv.shape == (2, 3, 64, 64) and pv.dtype == torch.float32
    new_h, new_w, _ = resize_longest_side((50, 80), 64)
    assert (new_h, new_w) == (40, 64)
    assert geo[0].original_hw == (50, 80) and geo[0].resized_hw == (40, 64)
    assert geo[0].padding == pad_geometry((40, 64), 64, centred=False) == (0, 0, 24, 0)
    expected = (200 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    torch.testing.assert_close(pv[0, :, :40, :], expected.view(3, 1, 1).expand(3, 40, 64))
    assert torch.all(pv[0, :, 40:, :] == 0)  # SAM pads bottom/right with 0 after normalising
    centred = MaskDecoderWrapper(tiny_sam, centred_padding=True)
    pv_c, geo_c = centred.preprocess([img])
    assert geo_c[0].padding == (12, 0, 12, 0)
    assert torch.all(pv_c[0, :, :12] == 0) and torch.all(pv_c[0, :, 52:] == 0)
    with pytest.raises(TypeError, match="uint8"):
        wrapper.preprocess([img.astype(np.float32)])


def test_decode_two_prompts_and_none_then_postprocess(tiny_sam):
    wrapper = MaskDecoderWrapper(tiny_sam)
    pv, geo = wrapper.preprocess(_images())
    emb = wrapper.image_embeddings(pv)
    assert emb.shape == (2, 32, 8, 8) and emb.grad_fn is None  # frozen encoder
    prompts = [torch.randn(2, 1, 32), torch.zeros(0, 1, 32)]
    low = wrapper.decode(emb, prompts)
    assert [tuple(x.shape) for x in low] == [(2, 32, 32), (0, 32, 32)]
    full = [wrapper.postprocess(lg, g) for lg, g in zip(low, geo)]
    assert tuple(full[0].shape) == (2, 50, 80)
    assert tuple(full[1].shape) == (0, 64, 40)
    # the two prompts give two different masks
    assert not torch.allclose(low[0][0], low[0][1])
    # each prompt's mask is what SAM gives for that prompt alone
    alone = wrapper.decode(emb[:1], [prompts[0][1:]])[0]
    torch.testing.assert_close(alone[0], low[0][1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prompt tensors for 2 images"):
        wrapper.decode(emb, prompts[:1])
    with pytest.raises(ValueError, match=r"\(n, 1, 32\)"):
        wrapper.decode(emb, [torch.zeros(2, 32), torch.zeros(0, 1, 32)])


def test_gradient_reaches_seg_head_and_mask_decoder(tiny_sam):
    torch.manual_seed(0)
    wrapper = MaskDecoderWrapper(tiny_sam).train()
    assert not wrapper.sam.vision_encoder.training  # frozen parts stay in eval mode
    head = SegHead(16, 32)
    images = _images()
    pv, geo = wrapper.preprocess(images)
    emb = wrapper.image_embeddings(pv)
    input_ids = torch.tensor([[1, 4, SEG, 5, SEG, 2], [1, 4, 5, 6, 7, 2]])
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    masks = predict_masks(hidden, input_ids, SEG, head, wrapper, emb, geo, source="token")
    assert [tuple(m.shape) for m in masks] == [(2, 50, 80), (0, 64, 40)]  # no [SEG] → no mask
    targets = [torch.zeros_like(masks[0]), torch.zeros(0, 64, 40)]
    targets[0][0, 10:30, 20:60] = 1
    targets[0][1, :, :30] = 1
    total, _ = mask_loss(masks, targets, bce_weight=1.0, dice_weight=5.0)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    dec_grads = [p.grad for p in wrapper.sam.mask_decoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in dec_grads)
    assert all(p.grad is None for p in wrapper.sam.vision_encoder.parameters())
    # only the [SEG] rows of the hidden states receive gradient
    assert hidden.grad[0, [2, 4]].abs().sum() > 0
    assert hidden.grad[0, [0, 1, 3, 5]].abs().sum() == 0 and hidden.grad[1].abs().sum() == 0
    wrapper.sam.zero_grad(set_to_none=True)


def test_load_sam_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAM checkpoint folder"):
        load_sam(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_sam(tmp_path)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="'llama'"):
        load_sam(llama)


def test_load_sam_preset_and_round_trip(tmp_path, tiny_sam):
    preset = load_sam("tiny-sam")
    assert isinstance(preset, type(tiny_sam)) and not preset.training
    folder = tmp_path / "tiny"
    tiny_sam.save_pretrained(folder)
    loaded = load_sam(folder)
    a, b = MaskDecoderWrapper(tiny_sam), MaskDecoderWrapper(loaded)
    pv, _ = a.preprocess(_images())
    prompts = [
        torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(3)),
        torch.zeros(0, 1, 32),
    ]
    with torch.no_grad():
        ea, eb = a.image_embeddings(pv), b.image_embeddings(pv)
        torch.testing.assert_close(ea, eb, rtol=0, atol=0)
        for x, y in zip(a.decode(ea, prompts), b.decode(eb, prompts)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_tiny_litesam_conv_encoder_decodes_trains_and_round_trips(tmp_path):
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.seg import ConvImageEncoder, build_tiny_litesam

    sam = load_sam("tiny-litesam")
    assert isinstance(sam.vision_encoder, ConvImageEncoder)
    # the embedding grid of the ViT preset (S/8), at the preset's width 64
    wrapper = MaskDecoderWrapper(build_tiny_litesam(image_size=64), freeze_vision_encoder=False)
    pv, geometry = wrapper.preprocess(_images())
    emb = wrapper.image_embeddings(pv)
    assert emb.shape == (len(geometry), 64, 8, 8) and wrapper.prompt_dim == 64
    prompts = [torch.randn(1, 1, 64) for _ in geometry]
    low = wrapper.decode(emb, prompts)
    assert low[0].shape == (1, 32, 32)
    low[0].sum().backward()
    assert all(p.grad is not None for p in wrapper.sam.vision_encoder.parameters())
    # saved inside a grounding model, the conv encoder comes back with its weights
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    model = GroundingLM(bb, MaskDecoderWrapper(build_tiny_litesam(seed=3)))
    model.save_pretrained(tmp_path / "g")
    assert (tmp_path / "g" / "sam" / "image_encoder.json").is_file()
    back = GroundingLM.from_pretrained(tmp_path / "g", device="cpu")
    assert isinstance(back.sam.sam.vision_encoder, ConvImageEncoder)
    for (ka, va), (kb, vb) in zip(model.sam.state_dict().items(), back.sam.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


def test_batched_decode_equals_one_image_at_a_time():
    from pathmllm.models.grounding.seg import build_tiny_litesam

    for sam in (build_tiny_sam(), build_tiny_litesam()):
        wrapper = MaskDecoderWrapper(sam)
        pv, geometry = wrapper.preprocess(_images())
        c = wrapper.prompt_dim
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randn(2, 1, c, generator=g) for _ in geometry]
        with torch.no_grad():
            emb = wrapper.image_embeddings(pv)
            batched = wrapper.decode(emb, prompts)  # same count everywhere: one batched call
            single = [wrapper.decode(emb[i:i + 1], [p])[0] for i, p in enumerate(prompts)]
        assert len(batched) == len(single) == len(geometry)
        for a, b in zip(batched, single):
            assert a.shape == b.shape == (2, 32, 32)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
