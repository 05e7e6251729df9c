"""The hierarchical slide encoder: cells → patches → regions → slide → LLM slide tokens.

Data layout (one batch of ``B`` slides, each cut into at most ``R`` regions of at most ``P``
grid slots, each patch with at most ``C`` cells; all padded, with boolean masks where True
means *real*)::

    cell_features   (B, R, P, C, cell_feature_dim)   CCAF → cell token per patch
    cell_mask       (B, R, P, C)
    patch_features  (B, R, P, patch_feature_dim)     + cell token → patch token
    patch_mask      (B, R, P)
    patch_positions (B, R, P, 2)  (row, col) in the region grid → region aggregator
    region_mask     (B, R)                                       → slide aggregator
    region_positions(B, R, 2)     optional (row, col) of the region on the slide

Per-scale tokens go through their own projector to the LLM hidden size ``L``; the pooled
per-scale vectors (``(B, L)`` each) feed the hierarchical contrastive and cross-scale
consistency losses, and a learned-query resampler over the concatenated projected tokens of
all scales gives ``num_slide_tokens`` slide tokens for the LLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from pathmllm.models.hierarchy.aggregators import RegionAggregator, SlideAggregator
from pathmllm.models.hierarchy.ccaf import CellCellAttentionFusion
from pathmllm.models.hierarchy.config import SCALES, HierarchyConfig
from pathmllm.models.hierarchy.projectors import ScaleProjectors
from pathmllm.models.hierarchy.resampler import LearnedQueryResampler

log = logging.getLogger(__name__)

__all__ = ["HierarchicalSlideEncoder", "HierarchyBatch", "HierarchyOutput"]


@dataclass
class HierarchyBatch:
    """Padded inputs of :class:`HierarchicalSlideEncoder` (shapes in the module docstring)."""

    cell_features: Tensor
    """``(B, R, P, C, cell_feature_dim)`` float; ``C`` may be 0."""
    cell_mask: Tensor
    """``(B, R, P, C)`` bool, True for real cells."""
    patch_features: Tensor
    """``(B, R, P, patch_feature_dim)`` float, from the patch encoder."""
    patch_mask: Tensor
    """``(B, R, P)`` bool, True for grid slots holding a real (tissue) patch."""
    patch_positions: Tensor
    """``(B, R, P, 2)`` long (row, col) of each slot in its region's grid."""
    region_mask: Tensor
    """``(B, R)`` bool, True for real regions; each slide needs at least one."""
    region_positions: Tensor | None = None
    """Optional ``(B, R, 2)`` (row, col) of each region on the slide's region grid."""

    def to(self, device: torch.device | str) -> HierarchyBatch:
        """A copy with every tensor on ``device``."""
        return HierarchyBatch(**{
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), Tensor) else v) for f in fields(self)
        })


@dataclass
class HierarchyOutput:
    """What :meth:`HierarchicalSlideEncoder.forward` returns."""

    pooled: dict[str, Tensor]
    """Per scale (``cell``, ``patch``, ``region``, ``slide``) a ``(B, llm_hidden_size)`` vector:
    the masked mean of the scale's projected tokens (the slide's own projected vector for
    ``slide``)."""
    slide_tokens: Tensor
    """``(B, num_slide_tokens, llm_hidden_size)`` tokens for the LLM."""
    tokens: dict[str, Tensor]
    """Per scale the projected tokens: cell and patch ``(B, R*P, L)``, region ``(B, R, L)``,
    slide ``(B, 1, L)``."""
    masks: dict[str, Tensor]
    """Per scale the ``(B, n)`` bool mask of ``tokens`` (True = real)."""
    region_weights: Tensor
    """``(B, R)`` the slide aggregator's attention over regions (evidence for answers)."""


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``(B, n, D)``, ``(B, n)`` bool → ``(B, D)`` mean over real rows (0 where none)."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


class HierarchicalSlideEncoder(nn.Module):
    """CCAF + region aggregator + slide aggregator + scale projectors + resampler."""

    def __init__(self, config: HierarchyConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.ccaf = CellCellAttentionFusion(config)
        self.patch_in = nn.Sequential(nn.Linear(config.patch_feature_dim, dim), nn.LayerNorm(dim))
        self.cell_to_patch = nn.Linear(dim, dim)
        self.region_aggregator = RegionAggregator(config)
        self.slide_aggregator = SlideAggregator(config)
        self.projectors = ScaleProjectors(config)
        self.scale_embed = nn.ParameterDict({
            s: nn.Parameter(torch.randn(config.llm_hidden_size) * 0.02) for s in config.resampler_scales
        })
        self.resampler = LearnedQueryResampler(
            config.llm_hidden_size,
            config.num_slide_tokens,
            heads=config.resampler_heads,
            layers=config.resampler_layers,
            dropout=config.dropout,
        )
        # text side of the hierarchical contrastive loss: LM text features -> the same space as
        # the pooled visual vectors (identity at start, so the LM's own geometry is the prior)
        self.text_projection = nn.Linear(config.llm_hidden_size, config.llm_hidden_size)
        with torch.no_grad():
            self.text_projection.weight.copy_(torch.eye(config.llm_hidden_size))
            self.text_projection.bias.zero_()

    def _check(self, batch: HierarchyBatch) -> tuple[int, int, int, int]:
        if batch.cell_features.ndim != 5:
            raise ValueError(f"cell_features must be (B, R, P, C, F), got {tuple(batch.cell_features.shape)}")
        b, r, p, c, f = batch.cell_features.shape
        if f != self.config.cell_feature_dim:
            raise ValueError(f"cell_features have {f} features, config.cell_feature_dim is {self.config.cell_feature_dim}")
        expected = {
            "cell_mask": (b, r, p, c),
            "patch_features": (b, r, p, self.config.patch_feature_dim),
            "patch_mask": (b, r, p),
            "patch_positions": (b, r, p, 2),
            "region_mask": (b, r),
        }
        if batch.region_positions is not None:
            expected["region_positions"] = (b, r, 2)
        for name, shape in expected.items():
            got = tuple(getattr(batch, name).shape)
            if got != shape:
                raise ValueError(f"HierarchyBatch.{name} must have shape {shape}, got {got}")
        return b, r, p, c

    def forward(self, batch: HierarchyBatch) -> HierarchyOutput:
        """Encode a batch of slides (see the module docstring for shapes)."""
        b, r, p, c = self._check(batch)
        dim = self.config.hidden_dim
        region_mask = batch.region_mask.to(torch.bool)
        patch_mask = batch.patch_mask.to(torch.bool) & region_mask[..., None]  # (B, R, P)

        # cells → one token per real patch (CCAF runs on real patches only)
        flat_patch = patch_mask.reshape(-1)
        cells = batch.cell_features.reshape(b * r * p, c, -1)[flat_patch]
        cell_mask = batch.cell_mask.to(torch.bool).reshape(b * r * p, c)[flat_patch]
        dtype = batch.patch_features.dtype
        cell_tokens = batch.patch_features.new_zeros(b * r * p, dim)
        if cells.shape[0]:
            cell_tokens = cell_tokens.index_put((flat_patch.nonzero(as_tuple=True)[0],), self.ccaf(cells, cell_mask).to(dtype))
        cell_tokens = cell_tokens.view(b, r, p, dim)

        # patches: patch feature + fused cell token
        patch_tokens = self.patch_in(batch.patch_features) + self.cell_to_patch(cell_tokens)  # (B, R, P, dim)

        # regions (real ones only)
        flat_region = region_mask.reshape(-1)
        region_in = patch_tokens.reshape(b * r, p, dim)[flat_region]
        region_vectors = patch_tokens.new_zeros(b * r, dim)
        region_vectors = region_vectors.index_put(
            (flat_region.nonzero(as_tuple=True)[0],),
            self.region_aggregator(
                region_in,
                batch.patch_positions.reshape(b * r, p, 2)[flat_region],
                patch_mask.reshape(b * r, p)[flat_region],
            ),
        ).view(b, r, dim)

        # slide
        slide_vector, region_weights = self.slide_aggregator(
            region_vectors, region_mask, batch.region_positions, return_weights=True
        )

        # projections, pooled vectors and slide tokens
        raw = {
            "cell": (cell_tokens.reshape(b, r * p, dim), patch_mask.reshape(b, r * p)),
            "patch": (patch_tokens.reshape(b, r * p, dim), patch_mask.reshape(b, r * p)),
            "region": (region_vectors, region_mask),
            "slide": (slide_vector[:, None], region_mask.new_ones(b, 1)),
        }
        tokens = {s: self.projectors(s, x) for s, (x, _) in raw.items()}
        masks = {s: m for s, (_, m) in raw.items()}
        pooled = {s: _masked_mean(tokens[s], masks[s]) for s in SCALES}
        fused = torch.cat([tokens[s] + self.scale_embed[s].to(tokens[s].dtype) for s in self.config.resampler_scales], 1)
        fused_mask = torch.cat([masks[s] for s in self.config.resampler_scales], 1)
        slide_tokens = self.resampler(fused, fused_mask)
        return HierarchyOutput(pooled, slide_tokens, tokens, masks, region_weights)
