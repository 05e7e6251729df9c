"""Hierarchical contrastive and cross-scale consistency losses against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pathmllm.losses import (  # noqa: E402
    SCALE_TO_TEXT,
    cross_scale_consistency_loss,
    hierarchical_contrastive_loss,
)

SCALES = ("cell", "patch", "region", "slide")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


def _log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _np_symmetric_info_nce(v: np.ndarray, t: np.ndarray, temperature: float) -> float:
    logits = _unit(v) @ _unit(t).T / temperature
    forward = -np.diag(_log_softmax_rows(logits)).mean()
    backward = -np.diag(_log_softmax_rows(logits.T)).mean()
    return float((forward + backward) / 2)


def _data(b: int = 6, d: int = 8, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    visual = {s: torch.randn(b, d, generator=gen, dtype=torch.float64, requires_grad=True) for s in SCALES}
    text = {SCALE_TO_TEXT[s]: torch.randn(b, d, generator=gen, dtype=torch.float64) for s in SCALES}
    return visual, text


def test_hierarchical_contrastive_matches_numpy() -> None:
    visual, text = _data()
    weights = {"cell": 0.5, "patch": 1.0, "region": 2.0, "slide": 0.25}
    total, terms = hierarchical_contrastive_loss(visual, text, weights, temperature=0.1)
    expected_terms = {
        s: _np_symmetric_info_nce(visual[s].detach().numpy(), text[SCALE_TO_TEXT[s]].numpy(), 0.1) for s in SCALES
    }
    for s in SCALES:
        assert terms[s].item() == pytest.approx(expected_terms[s], rel=1e-10)
    assert total.item() == pytest.approx(sum(weights[s] * expected_terms[s] for s in SCALES), rel=1e-10)


def test_text_may_be_keyed_by_scale() -> None:
    visual, text = _data()
    by_scale = {s: text[SCALE_TO_TEXT[s]] for s in SCALES}
    a, _ = hierarchical_contrastive_loss(visual, text)
    b, _ = hierarchical_contrastive_loss(visual, by_scale)
    assert a.item() == pytest.approx(b.item())


def test_zero_weight_drops_the_term_and_gradients_flow() -> None:
    visual, text = _data()
    weights = {"cell": 1.0, "patch": 0.0, "region": 1.0, "slide": 3.0}
    total, terms = hierarchical_contrastive_loss(visual, text, weights, temperature=0.07)
    assert "patch" not in terms
    full, full_terms = hierarchical_contrastive_loss(visual, text, {**weights, "patch": 1.0}, temperature=0.07)
    assert total.item() == pytest.approx(full.item() - full_terms["patch"].item())
    total.backward()
    for s in ("cell", "region", "slide"):
        assert visual[s].grad is not None and visual[s].grad.abs().sum() > 0
    assert visual["patch"].grad is None
    with pytest.raises(ValueError, match="weight 0"):
        hierarchical_contrastive_loss(visual, text, dict.fromkeys(SCALES, 0.0))
    with pytest.raises(KeyError, match="no text"):
        hierarchical_contrastive_loss(visual, {"word": text["word"]}, {"slide": 1.0})


def _np_consistency(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float((1 - cos).mean())


def test_cross_scale_consistency_matches_numpy() -> None:
    visual, _ = _data()
    weights = {"cell-patch": 2.0, "patch-region": 0.5, "region-slide": 1.0}
    total, terms = cross_scale_consistency_loss(visual, weights=weights)
    assert set(terms) == set(weights)
    expected = 0.0
    for fine, coarse in zip(SCALES[:-1], SCALES[1:]):
        ref = _np_consistency(visual[fine].detach().numpy(), visual[coarse].detach().numpy())
        assert terms[f"{fine}-{coarse}"].item() == pytest.approx(ref, rel=1e-10)
        expected += weights[f"{fine}-{coarse}"] * ref
    assert total.item() == pytest.approx(expected, rel=1e-10)
    total.backward()
    for s in SCALES:
        assert visual[s].grad is not None and visual[s].grad.abs().sum() > 0


def test_cross_scale_consistency_zero_weight_and_order() -> None:
    visual, _ = _data()
    total, terms = cross_scale_consistency_loss(visual, weights={"cell-patch": 0.0, "region-slide": 0.0})
    assert set(terms) == {"patch-region"}
    total.backward()
    assert visual["cell"].grad is None and visual["slide"].grad is None
    assert visual["patch"].grad.abs().sum() > 0 and visual["region"].grad.abs().sum() > 0
    _, terms = cross_scale_consistency_loss(visual, order=("cell", "slide"))
    assert set(terms) == {"cell-slide"}
    with pytest.raises(KeyError):
        cross_scale_consistency_loss({"cell": visual["cell"]})
    # identical vectors are perfectly consistent
    same = {s: visual["cell"].detach() for s in SCALES}
    zero, _ = cross_scale_consistency_loss(same)
    assert zero.item() == pytest.approx(0.0, abs=1e-12)
