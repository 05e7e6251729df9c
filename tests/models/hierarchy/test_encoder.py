"""End to end: HierarchicalSlideEncoder shapes and gradient coverage."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pathmllm.losses import cross_scale_consistency_loss, hierarchical_contrastive_loss  # noqa: E402
from pathmllm.models.hierarchy import (  # noqa: E402
    SCALES,
    HierarchicalSlideEncoder,
    HierarchyBatch,
    HierarchyConfig,
)

B, R, G, C = 3, 4, 3, 5  # slides, regions per slide, grid side, cells per patch
P = G * G


def _config() -> HierarchyConfig:
    return HierarchyConfig(cell_feature_dim=6, patch_feature_dim=16, hidden_dim=32, num_heads=4, ccaf_layers=1,
                           region_layers=1, region_grid_size=G, llm_hidden_size=24, num_slide_tokens=7,
                           resampler_layers=1, resampler_heads=4)


def _batch(seed: int = 0) -> HierarchyBatch:
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], -1)
    cell_mask = torch.rand(B, R, P, C, generator=gen) > 0.4
    cell_mask[0, 0, 0] = False  # an empty patch
    patch_mask = torch.rand(B, R, P, generator=gen) > 0.2
    patch_mask[:, :, 0] = True
    region_mask = torch.ones(B, R, dtype=torch.bool)
    region_mask[1, 2:] = False
    return HierarchyBatch(
        cell_features=torch.randn(B, R, P, C, 6, generator=gen),
        cell_mask=cell_mask,
        patch_features=torch.randn(B, R, P, 16, generator=gen),
        patch_mask=patch_mask,
        patch_positions=grid.expand(B, R, P, 2).clone(),
        region_mask=region_mask,
        region_positions=torch.randint(0, 20, (B, R, 2), generator=gen),
    )


def test_forward_shapes() -> None:
    torch.manual_seed(0)
    model = HierarchicalSlideEncoder(_config()).eval()
    out = model(_batch())
    assert set(out.pooled) == set(SCALES)
    for s in SCALES:
        assert out.pooled[s].shape == (B, 24)
        assert torch.isfinite(out.pooled[s]).all()
    assert out.slide_tokens.shape == (B, 7, 24)
    assert out.tokens["cell"].shape == (B, R * P, 24) and out.tokens["patch"].shape == (B, R * P, 24)
    assert out.tokens["region"].shape == (B, R, 24) and out.tokens["slide"].shape == (B, 1, 24)
    assert out.region_weights.shape == (B, R)
    assert out.region_weights[1, 2:].abs().sum() == 0


def test_padded_regions_do_not_matter() -> None:
    torch.manual_seed(0)
    model = HierarchicalSlideEncoder(_config()).eval()
    batch = _batch()
    out = model(batch)
    noisy = _batch()
    noisy.patch_features[1, 2:] = 100.0
    noisy.cell_features[1, 2:] = -100.0
    again = model(noisy)
    torch.testing.assert_close(again.slide_tokens, out.slide_tokens, atol=1e-5, rtol=0)
    for s in SCALES:
        torch.testing.assert_close(again.pooled[s], out.pooled[s], atol=1e-5, rtol=0)


def test_bad_shapes_are_reported() -> None:
    model = HierarchicalSlideEncoder(_config())
    batch = _batch()
    batch.patch_mask = batch.patch_mask[:, :, :-1]
    with pytest.raises(ValueError, match="patch_mask"):
        model(batch)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = HierarchicalSlideEncoder(_config())
    out = model(_batch())
    # text side through the encoder's text projection (as HierarchicalSlideLM.embed_texts does)
    text = {s: model.text_projection(torch.randn(B, 24)) for s in SCALES}
    contrastive, _ = hierarchical_contrastive_loss(out.pooled, text, temperature=0.1)
    consistency, _ = cross_scale_consistency_loss(out.pooled)
    (contrastive + consistency).backward(retain_graph=True)
    slide_path = ("resampler.", "scale_embed.")
    for name, p in model.named_parameters():
        if name.startswith(slide_path):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    out.slide_tokens.pow(2).mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("text_projection."):  # text side only: no path from the slide tokens
            assert p.grad is None, name
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
