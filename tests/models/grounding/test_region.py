"""Region-prompt geometry and the region encoder, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from pathmllm.models.grounding.region import (
    RegionEncoder,
    mask_to_grid,
    pad_geometry,
    polygon_mask,
    resize_longest_side,
    to_model_mask,
    unpad_and_resize,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def _blob(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=bool)
    for _ in range(3):
        r, c = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        rr, cc = disk((r, c), rng.integers(min(h, w) // 10, min(h, w) // 5), shape=(h, w))
        m[rr, cc] = True
    return m


def test_resize_longest_side_and_padding() -> None:
    assert resize_longest_side((600, 1000), 336) == (202, 336, 0.336)
    assert resize_longest_side((1000, 600), 256)[:2] == (256, 154)
    assert pad_geometry((202, 336), 336, centred=True) == (67, 0, 67, 0)
    assert pad_geometry((201, 336), 336, centred=True) == (67, 0, 68, 0)  # pad_top = pad_h // 2
    assert pad_geometry((201, 336), 336, centred=False) == (0, 0, 135, 0)
    assert pad_geometry((336, 101), 336, centred=True) == (0, 117, 0, 118)
    with pytest.raises(ValueError):
        pad_geometry((340, 100), 336, centred=True)


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("hw", [(420, 700), (900, 512)])
def test_round_trip_recovers_mask(centred: bool, hw: tuple[int, int]) -> None:
    mask = _blob(*hw)
    model = to_model_mask(mask, 256, centred=centred)
    assert model.shape == (256, 256) and model.dtype == torch.float32
    new_h, new_w, _ = resize_longest_side(hw, 256)
    top, left, bottom, right = pad_geometry((new_h, new_w), 256, centred)
    # padding is zero, content sits where the geometry says
    assert model.sum() > 0
    assert model[top : top + new_h, left : left + new_w].sum() == model.sum()
    back = unpad_and_resize(model, hw, 256, centred=centred)
    assert back.shape == hw
    assert _iou(back.numpy() > 0.5, mask) > 0.95


def test_unpad_and_resize_low_res_and_batch() -> None:
    hw = (480, 640)
    mask = _blob(*hw, seed=3)
    model = to_model_mask(mask, 1024, centred=False)
    low = torch.nn.functional.interpolate(model[None, None], size=(256, 256), mode="bilinear")[0]
    back = unpad_and_resize(torch.stack([low, low]), hw, 1024, centred=False)  # (2, 1, 256, 256)
    assert back.shape == (2, 1, *hw)
    assert _iou(back[1, 0].numpy() > 0.5, mask) > 0.9


def test_wrong_padding_convention_misplaces_the_mask() -> None:
    hw = (300, 700)
    mask = np.zeros(hw, dtype=bool)
    mask[:60, 100:300] = True
    back = unpad_and_resize(to_model_mask(mask, 336, centred=True), hw, 336, centred=False)
    assert _iou(back.numpy() > 0.5, mask) < 0.5


def test_polygon_mask_x_is_column() -> None:
    m = polygon_mask([(10, 2), (30, 2), (30, 6), (10, 6)], (20, 40))
    rows, cols = np.nonzero(m)
    assert m.shape == (20, 40)
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 10 and cols.max() <= 30
    assert m[4, 20] and not m[10, 4]
    with pytest.raises(ValueError, match="at least 3"):
        polygon_mask([(0, 0), (5, 5)], (10, 10))
    with pytest.raises(ValueError, match="outside"):
        polygon_mask([(50, 50), (60, 50), (60, 60)], (10, 10))


def test_mask_to_grid_fractions() -> None:
    # 336x336 image, 14-px patches: one full patch and one half patch
    mask = np.zeros((336, 336), dtype=bool)
    mask[0:14, 0:14] = True
    mask[14:21, 28:42] = True
    g = mask_to_grid(mask, (24, 24), input_size=336, image_hw=(336, 336))
    assert g.shape == (24, 24) and g.dtype == torch.float32
    assert g[0, 0] == pytest.approx(1.0)
    assert g[1, 2] == pytest.approx(0.5)
    assert float(g.sum()) == pytest.approx(1.5)


def test_mask_to_grid_padding_and_thin_region() -> None:
    hw = (500, 1000)  # scale 0.336 -> 168x336, centred pad 84 top
    full = np.ones(hw, dtype=bool)
    g = mask_to_grid(full, (24, 24), centred=True, input_size=336)
    assert g[:6].sum() == 0 and g[18:].sum() == 0 and torch.allclose(g[6:18], torch.ones(12, 24))
    g2 = mask_to_grid(full, (24, 24), centred=False, input_size=336)
    assert torch.allclose(g2[:12], torch.ones(12, 24)) and g2[12:].sum() == 0
    thin = np.zeros(hw, dtype=bool)
    thin[250, 100:900] = True  # one pixel high: nearest sampling at scale 0.336 could drop it
    gt = mask_to_grid(thin, (24, 24), input_size=336)
    assert (gt > 0).sum() >= 15
    assert float(gt.max()) < 0.1


def test_mask_to_grid_errors() -> None:
    with pytest.raises(ValueError, match="the region mask is empty"):
        mask_to_grid(np.zeros((30, 40), bool), (24, 24), input_size=336)
    with pytest.raises(ValueError, match="mask is 40x30 but the image is 50x30"):
        mask_to_grid(np.ones((30, 40), bool), (24, 24), input_size=336, image_hw=(30, 50))


def _inputs(b: int = 2, gh: int = 4, gw: int = 5, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    feats = torch.randn(b, gh * gw, d)
    w = torch.zeros(b, gh, gw)
    w[0, 1:3, 1:4] = torch.rand(2, 3) + 0.1
    w[1, 0, 0] = 0.3
    w[1, 3, 4] = 1.0
    return feats, w


def test_single_mode_is_weighted_mean_through_proj() -> None:
    feats, w = _inputs()
    enc = RegionEncoder(16, 32, mode="single")
    out = enc(feats, w)
    assert out.shape == (2, 1, 32)
    flat = w.reshape(2, -1)
    for i in range(2):
        expected = sum(flat[i, j] * feats[i, j] for j in range(20)) / flat[i].sum()
        torch.testing.assert_close(out[i, 0], enc.proj(expected))


def test_single_mode_permutation_invariant() -> None:
    feats, w = _inputs()
    enc = RegionEncoder(16, 32, mode="single", mlp_depth=2)
    perm = torch.randperm(20)
    w_perm = w.reshape(2, -1)[:, perm].reshape(2, 4, 5)
    torch.testing.assert_close(enc(feats[:, perm], w_perm), enc(feats, w))


def test_multi_mode_ignores_uncovered_patches() -> None:
    feats, w = _inputs()
    enc = RegionEncoder(16, 32, mode="multi", num_tokens=3, num_heads=4)
    out = enc(feats, w)
    assert out.shape == (2, 3, 32)
    uncovered = (w.reshape(2, -1) == 0).unsqueeze(-1)
    changed = torch.where(uncovered, torch.randn_like(feats) * 100, feats)
    torch.testing.assert_close(enc(changed, w), out)
    covered_changed = torch.where(uncovered, feats, feats + 1.0)
    assert not torch.allclose(enc(covered_changed, w), out)


@pytest.mark.parametrize("mode,k", [("single", 1), ("multi", 2)])
def test_gradient_flows(mode: str, k: int) -> None:
    feats, w = _inputs()
    feats.requires_grad_(True)
    enc = RegionEncoder(16, 8, mode=mode, num_tokens=k, num_heads=2)  # type: ignore[arg-type]
    enc(feats, w).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    uncovered = w.reshape(2, -1) == 0
    assert feats.grad[uncovered].abs().sum() == 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_encoder_errors() -> None:
    feats, w = _inputs()
    enc = RegionEncoder(16, 8)
    w[1] = 0
    with pytest.raises(ValueError, match="empty"):
        enc(feats, w)
    with pytest.raises(ValueError, match="do not match"):
        enc(feats[:, :10], torch.ones(2, 4, 5))
    with pytest.raises(ValueError):
        RegionEncoder(16, 8, mode="single", num_tokens=2)
