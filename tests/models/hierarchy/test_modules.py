"""CCAF, region / slide aggregators and the resampler: invariances, masks, gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pathmllm.models.hierarchy import (  # noqa: E402
    CellCellAttentionFusion,
    HierarchyConfig,
    LearnedQueryResampler,
    RegionAggregator,
    SlideAggregator,
)

ATOL = 1e-5


def _config(**kw: object) -> HierarchyConfig:
    base = dict(cell_feature_dim=6, patch_feature_dim=16, hidden_dim=32, num_heads=4, ccaf_layers=2,
                region_layers=2, region_grid_size=4, llm_hidden_size=32, num_slide_tokens=5,
                resampler_layers=1, resampler_heads=4)
    base.update(kw)
    return HierarchyConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------ CCAF


def test_ccaf_cell_order_invariance() -> None:
    ccaf = CellCellAttentionFusion(_config()).eval()
    cells = torch.randn(3, 7, 6)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = ccaf(cells, mask)
    assert out.shape == (3, 32)
    perm = torch.randperm(7)
    torch.testing.assert_close(ccaf(cells[:, perm], mask[:, perm]), out, atol=ATOL, rtol=0)


def test_ccaf_padding_invariance() -> None:
    ccaf = CellCellAttentionFusion(_config()).eval()
    cells = torch.randn(2, 4, 6)
    out = ccaf(cells)  # default mask: all real
    padded = torch.cat([cells, 100 * torch.randn(2, 3, 6)], dim=1)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, :4] = True
    torch.testing.assert_close(ccaf(padded, mask), out, atol=ATOL, rtol=0)


def test_ccaf_empty_patch_uses_learned_token() -> None:
    ccaf = CellCellAttentionFusion(_config()).eval()
    cells = torch.randn(3, 5, 6)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # patch 1 has no cells (its padded values are garbage)
    out = ccaf(cells, mask)
    assert torch.isfinite(out).all()
    expected = ccaf.empty_output()
    torch.testing.assert_close(out[1], expected, atol=ATOL, rtol=0)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    # zero-width cell tensor: every patch is empty
    none = ccaf(torch.zeros(2, 0, 6), torch.zeros(2, 0, dtype=torch.bool))
    torch.testing.assert_close(none, expected.expand(2, -1), atol=ATOL, rtol=0)
    # the empty path depends on the learned token
    with torch.no_grad():
        ccaf.empty_token.add_(torch.randn(32))
    assert not torch.allclose(ccaf(cells, mask)[1], out[1], atol=1e-3)


def test_ccaf_gradients_reach_every_parameter() -> None:
    ccaf = CellCellAttentionFusion(_config())
    cells = torch.randn(4, 5, 6)
    mask = torch.rand(4, 5) > 0.3
    mask[0] = False  # one empty patch so the empty token is used
    mask[1, 0] = True
    ccaf(cells, mask).pow(2).sum().backward()
    for name, p in ccaf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------ regions


def _grid(n: int, size: int = 4) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], -1).expand(n, -1, -1).clone()


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_region_aggregator_respects_mask(kind: str) -> None:
    agg = RegionAggregator(_config(position_embedding=kind)).eval()
    patches = torch.randn(2, 16, 32)
    mask = torch.rand(2, 16) > 0.4
    mask[:, 0] = True
    out = agg(patches, _grid(2), mask)
    assert out.shape == (2, 32)
    changed = torch.where(mask[..., None], patches, 50 * torch.randn_like(patches))
    torch.testing.assert_close(agg(changed, _grid(2), mask), out, atol=ATOL, rtol=0)
    empty = agg(patches, _grid(2), torch.zeros(2, 16, dtype=torch.bool))
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_region_aggregator_uses_2d_positions(kind: str) -> None:
    agg = RegionAggregator(_config(position_embedding=kind)).eval()
    patches = torch.randn(1, 16, 32)
    positions = _grid(1)
    out = agg(patches, positions)
    perm = torch.randperm(16)
    # the same patches placed on other grid slots: a different region
    assert not torch.allclose(agg(patches[:, perm], positions), out, atol=1e-3)
    # moving patches together with their positions changes nothing (order of the sequence is free)
    torch.testing.assert_close(agg(patches[:, perm], positions[:, perm]), out, atol=ATOL, rtol=0)
    # transposing the grid (row <-> col) matters too
    assert not torch.allclose(agg(patches, positions.flip(-1)), out, atol=1e-3)


def test_region_aggregator_rejects_out_of_grid_positions() -> None:
    agg = RegionAggregator(_config())
    with pytest.raises(ValueError, match="positions"):
        agg(torch.randn(1, 2, 32), torch.tensor([[[0, 0], [0, 4]]]))


# ------------------------------------------------------------------------------------ slide


def test_slide_aggregator_ignores_masked_regions_and_order() -> None:
    agg = SlideAggregator(_config()).eval()
    regions = torch.randn(2, 6, 32)
    positions = torch.randint(0, 10, (2, 6, 2))
    mask = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out, weights = agg(regions, mask, positions, return_weights=True)
    assert out.shape == (2, 32) and weights.shape == (2, 6)
    assert weights[0, 3] == 0 and weights[0, 5] == 0
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    changed = torch.where(mask[..., None], regions, 50 * torch.randn_like(regions))
    torch.testing.assert_close(agg(changed, mask, positions), out, atol=ATOL, rtol=0)
    perm = torch.randperm(6)
    torch.testing.assert_close(agg(regions[:, perm], mask[:, perm], positions[:, perm]), out, atol=ATOL, rtol=0)
    # only the first three regions of slide 0 == slide 0 truncated
    keep = torch.tensor([0, 1, 2, 4])
    torch.testing.assert_close(agg(regions[:1, keep], None, positions[:1, keep]), out[:1], atol=ATOL, rtol=0)


def test_slide_aggregator_is_not_a_plain_mean() -> None:
    agg = SlideAggregator(_config()).eval()
    with torch.no_grad():  # sharper attention than the tiny random init gives
        agg.query.normal_(0, 1.0)
    regions = torch.randn(3, 8, 32)
    _, weights = agg(regions, return_weights=True)
    assert not torch.allclose(weights, torch.full_like(weights, 1 / 8), atol=1e-3)
    # attention pooling: the output differs from running the same head on the plain mean
    mean_out = agg(regions.mean(1, keepdim=True))
    assert not torch.allclose(agg(regions), mean_out, atol=1e-3)
    # and is not the mean of the region vectors itself
    assert not torch.allclose(agg(regions), regions.mean(1), atol=1e-2)


def test_slide_aggregator_needs_a_region() -> None:
    agg = SlideAggregator(_config())
    with pytest.raises(ValueError, match="at least one"):
        agg(torch.randn(1, 3, 32), torch.zeros(1, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------ resampler


@pytest.mark.parametrize("length", [0, 1, 7, 40])
def test_resampler_fixed_number_of_tokens(length: int) -> None:
    res = LearnedQueryResampler(32, num_queries=5, heads=4, layers=2).eval()
    out = res(torch.randn(2, length, 32))
    assert out.shape == (2, 5, 32)
    assert torch.isfinite(out).all()


def test_resampler_respects_mask() -> None:
    res = LearnedQueryResampler(32, num_queries=5, heads=4, layers=2).eval()
    tokens = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, ::2] = False
    out = res(tokens, mask)
    changed = torch.where(mask[..., None], tokens, 50 * torch.randn_like(tokens))
    torch.testing.assert_close(res(changed, mask), out, atol=ATOL, rtol=0)
    torch.testing.assert_close(res(tokens[:1, :6]), out[:1], atol=ATOL, rtol=0)
    assert not torch.allclose(res(tokens), out, atol=1e-3)
