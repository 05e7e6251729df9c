"""Scale-specific projectors from the visual hidden size to the LLM hidden size."""

from __future__ import annotations

from torch import Tensor, nn

from pathmllm.models.hierarchy.config import SCALES, HierarchyConfig

__all__ = ["ScaleProjector", "ScaleProjectors"]


class ScaleProjector(nn.Module):
    """Two-layer MLP with GELU: ``(..., in_dim)`` → ``(..., out_dim)`` (LLaVA-1.5 style)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` → ``(..., out_dim)``."""
        return self.net(x)


class ScaleProjectors(nn.Module):
    """One :class:`ScaleProjector` per scale (cell, patch, region, slide), hidden → LLM hidden."""

    def __init__(self, config: HierarchyConfig, scales: tuple[str, ...] = SCALES) -> None:
        super().__init__()
        self.projectors = nn.ModuleDict({s: ScaleProjector(config.hidden_dim, config.llm_hidden_size) for s in scales})

    def forward(self, scale: str, x: Tensor) -> Tensor:
        """Project ``(..., hidden_dim)`` tokens of ``scale`` to ``(..., llm_hidden_size)``."""
        if scale not in self.projectors:
            raise KeyError(f"no projector for scale {scale!r}; have {list(self.projectors)}")
        return self.projectors[scale](x)
