"""Patch / region selection: diversity, relevance, masks, determinism, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from pathmllm.models.hierarchy.selection import select_patches, select_regions, take_regions


def _clusters() -> np.ndarray:
    """Three tight clusters: 5 near-duplicates along x, 1 along y, 1 along z."""
    rng = np.random.default_rng(0)
    x = np.array([1.0, 0, 0]) + rng.normal(0, 1e-3, (5, 3))
    y = np.array([[0.0, 1.0, 0.0]])
    z = np.array([[0.0, 0.0, 1.0]])
    return np.concatenate([x, y, z])


def test_diversity_picks_distinct_before_duplicates() -> None:
    feats = _clusters()
    idx = select_patches(feats, 3)
    assert idx.dtype == np.int64 and idx.shape == (3,)
    assert idx[0] < 5  # closest to the mean: the big x cluster
    assert set(idx[1:].tolist()) == {5, 6}


def test_exact_duplicates_not_picked_twice_before_distinct() -> None:
    base = np.eye(4)
    feats = np.concatenate([base, base])  # every vector twice
    idx = select_patches(feats, 4)
    chosen = {tuple(feats[i]) for i in idx}
    assert len(chosen) == 4


def test_relevance_changes_the_choice() -> None:
    feats = _clusters()
    q = np.array([0.0, 0.0, 1.0])
    without = select_patches(feats, 1)
    with_q = select_patches(feats, 1, question_vec=q)
    assert without[0] < 5 and with_q[0] == 6
    # pure relevance keeps the x cluster out of a 2-pick when the question points between y and z
    two = select_patches(feats, 2, question_vec=np.array([0.0, 1.0, 1.0]), relevance_weight=1.0)
    assert set(two.tolist()) == {5, 6}
    # pure diversity ignores the question after the first pick
    div = select_patches(feats, 2, question_vec=q, relevance_weight=0.0)
    assert div[0] == 6 and div[1] != 6


def test_mask_respected() -> None:
    feats = _clusters()
    mask = np.ones(7, dtype=bool)
    mask[[5, 6]] = False
    idx = select_patches(feats, 3, mask=mask)
    assert all(mask[i] for i in idx)
    assert select_patches(feats, 10, mask=mask).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="mask must have shape"):
        select_patches(feats, 2, mask=np.ones(3, dtype=bool))


def test_deterministic_and_torch_in_torch_out() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 8))
    q = rng.normal(size=8)
    a = select_regions(feats, 10, question_vec=q)
    b = select_regions(feats, 10, question_vec=q)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10
    t = select_regions(torch.tensor(feats, dtype=torch.float32), 10, question_vec=torch.tensor(q))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.long
    assert t.tolist() == a.tolist()


def test_k_edge_cases() -> None:
    feats = _clusters()
    assert select_patches(feats, 0).shape == (0,)
    assert select_patches(feats, 7).tolist() == list(range(7))
    assert select_patches(feats, 100).tolist() == list(range(7))
    assert select_patches(np.zeros((0, 3)), 4).shape == (0,)
    assert select_patches(feats, 1).shape == (1,)
    with pytest.raises(ValueError, match="k must be"):
        select_patches(feats, -1)
    with pytest.raises(ValueError, match="relevance_weight"):
        select_patches(feats, 2, question_vec=np.ones(3), relevance_weight=1.5)
    with pytest.raises(ValueError, match="question_vec has length 4"):
        select_patches(feats, 2, question_vec=np.ones(4))
    with pytest.raises(ValueError, match="2-D"):
        select_patches(np.ones(3), 2)


def test_take_regions_subsets_batch() -> None:
    torch = pytest.importorskip("torch")
    from pathmllm.models.hierarchy import HierarchyBatch

    b, r, p, c = 2, 5, 4, 3
    batch = HierarchyBatch(
        cell_features=torch.randn(b, r, p, c, 6), cell_mask=torch.ones(b, r, p, c, dtype=torch.bool),
        patch_features=torch.arange(b * r, dtype=torch.float32).view(b, r, 1, 1).expand(b, r, p, 16).clone(),
        patch_mask=torch.ones(b, r, p, dtype=torch.bool), patch_positions=torch.zeros(b, r, p, 2, dtype=torch.long),
        region_mask=torch.ones(b, r, dtype=torch.bool),
    )
    sub = take_regions(batch, [torch.tensor([4, 1]), torch.tensor([2])])
    assert sub.patch_features.shape == (2, 2, 4, 16)
    assert sub.patch_features[0, :, 0, 0].tolist() == [4.0, 1.0]
    assert sub.patch_features[1, 0, 0, 0].item() == 7.0
    assert sub.region_mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(IndexError, match="out of range"):
        take_regions(batch, [torch.tensor([9]), torch.tensor([0])])
