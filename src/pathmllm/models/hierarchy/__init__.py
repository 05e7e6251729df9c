"""MLLM-HWSI hierarchy: cells (CCAF) → patches → regions → slide → LLM slide tokens.

Public pieces: :class:`HierarchyConfig`, :class:`CellCellAttentionFusion`,
:class:`RegionAggregator`, :class:`SlideAggregator`, :class:`ScaleProjector`,
:class:`ScaleProjectors`, :class:`LearnedQueryResampler`, :class:`HierarchicalSlideEncoder`
with its :class:`HierarchyBatch` input and :class:`HierarchyOutput` output. The matching
losses are :func:`pathmllm.losses.hierarchical_contrastive_loss` and
:func:`pathmllm.losses.cross_scale_consistency_loss`.
"""

from pathmllm.models.hierarchy.aggregators import RegionAggregator, SlideAggregator
from pathmllm.models.hierarchy.ccaf import CellCellAttentionFusion
from pathmllm.models.hierarchy.config import SCALES, HierarchyConfig
from pathmllm.models.hierarchy.encoder import (
    HierarchicalSlideEncoder,
    HierarchyBatch,
    HierarchyOutput,
)
from pathmllm.models.hierarchy.projectors import ScaleProjector, ScaleProjectors
from pathmllm.models.hierarchy.resampler import LearnedQueryResampler

__all__ = [
    "SCALES",
    "CellCellAttentionFusion",
    "HierarchicalSlideEncoder",
    "HierarchyBatch",
    "HierarchyConfig",
    "HierarchyOutput",
    "LearnedQueryResampler",
    "RegionAggregator",
    "ScaleProjector",
    "ScaleProjectors",
    "SlideAggregator",
]
