"""Configuration of the hierarchical (cell / patch / region / slide) slide encoder (MLLM-HWSI)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCALES", "HierarchyConfig"]

#: the four scales, finest first (cell ~ word, patch ~ phrase, region ~ sentence, slide ~ paragraph)
SCALES: tuple[str, ...] = ("cell", "patch", "region", "slide")


@dataclass
class HierarchyConfig:
    """Sizes and switches of :class:`~pathmllm.models.hierarchy.HierarchicalSlideEncoder`."""

    cell_feature_dim: int = 6
    """Length of one cell's feature vector (default: the six morphology / stain columns of
    ``pathmllm.cells.features.MEAN_COLUMNS``)."""
    patch_feature_dim: int = 1024
    """Length of one patch feature from the patch encoder (e.g. 1024 for UNI)."""
    hidden_dim: int = 256
    """Width of the CCAF, region and slide transformers (the visual hidden size)."""
    num_heads: int = 4
    """Attention heads in every visual transformer and pooling layer (must divide ``hidden_dim``)."""
    ccaf_layers: int = 2
    """Transformer layers of the Cell-Cell Attention Fusion over a patch's cells."""
    region_layers: int = 2
    """Transformer layers of the region aggregator over a region's patch grid."""
    mlp_ratio: float = 4.0
    """Feed-forward width of the transformer layers as a multiple of their width."""
    dropout: float = 0.0
    """Dropout in attention and feed-forward layers (training only)."""
    region_grid_size: int = 16
    """Patches per region side (regions are ``region_grid_size x region_grid_size`` patches)."""
    position_embedding: str = "learned"
    """2-D positions of patches inside a region: ``"learned"`` (row + column tables) or
    ``"sinusoidal"`` (fixed)."""
    llm_hidden_size: int = 4096
    """Hidden size of the language model; every scale projector maps to it."""
    num_slide_tokens: int = 32
    """Fixed number of slide tokens the resampler hands to the LLM."""
    resampler_layers: int = 2
    """Cross-attention + feed-forward blocks of the learned-query resampler."""
    resampler_heads: int = 8
    """Attention heads of the resampler (must divide ``llm_hidden_size``)."""
    resampler_scales: tuple[str, ...] = SCALES
    """Scales whose projected tokens the resampler reads (a subset of :data:`SCALES`)."""

    def __post_init__(self) -> None:
        for name in ("cell_feature_dim", "patch_feature_dim", "hidden_dim", "num_heads", "llm_hidden_size",
                     "num_slide_tokens", "region_grid_size", "resampler_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HierarchyConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        if self.llm_hidden_size % self.resampler_heads:
            raise ValueError(
                f"llm_hidden_size {self.llm_hidden_size} is not divisible by resampler_heads {self.resampler_heads}"
            )
        if self.position_embedding not in ("learned", "sinusoidal"):
            raise ValueError(f"position_embedding must be 'learned' or 'sinusoidal', got {self.position_embedding!r}")
        unknown = set(self.resampler_scales) - set(SCALES)
        if unknown or not self.resampler_scales:
            raise ValueError(f"resampler_scales must be a non-empty subset of {SCALES}, got {self.resampler_scales}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def ffn_dim(self) -> int:
        """Feed-forward width of the visual transformers."""
        return int(self.hidden_dim * self.mlp_ratio)
