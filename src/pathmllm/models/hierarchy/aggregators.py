"""Region and slide aggregators.

* :class:`RegionAggregator`: a transformer over the patch grid of one region with 2-D
  (row, col) position embeddings and a CLS token; empty grid cells are key-padded.
* :class:`SlideAggregator`: multi-head attention pooling of region vectors with a learned query
  (not the plain mean of the authors' release); padded regions are ignored, the result is
  invariant to the order of the regions, and the attention weights say which regions matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathmllm.models.hierarchy.config import HierarchyConfig
from pathmllm.models.hierarchy.layers import sinusoidal_2d, transformer_encoder

__all__ = ["RegionAggregator", "SlideAggregator"]


class RegionAggregator(nn.Module):
    """One vector per region from the patch tokens on its grid."""

    def __init__(self, config: HierarchyConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.grid_size = config.region_grid_size
        self.kind = config.position_embedding
        if self.kind == "learned":
            self.row_embed = nn.Embedding(self.grid_size, dim)
            self.col_embed = nn.Embedding(self.grid_size, dim)
            nn.init.normal_(self.row_embed.weight, std=0.02)
            nn.init.normal_(self.col_embed.weight, std=0.02)
        elif dim % 4:
            raise ValueError(f"sinusoidal positions need hidden_dim divisible by 4, got {dim}")
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.encoder = transformer_encoder(dim, config.num_heads, config.region_layers, config.ffn_dim, config.dropout)
        self.norm = nn.LayerNorm(dim)

    def position_embedding(self, positions: Tensor) -> Tensor:
        """``(..., 2)`` long (row, col) in ``[0, region_grid_size)`` → ``(..., hidden_dim)``."""
        positions = positions.long()
        if self.kind == "learned":
            if positions.numel() and (positions.min() < 0 or positions.max() >= self.grid_size):
                raise ValueError(f"patch positions must lie in [0, {self.grid_size}), got "
                                 f"[{int(positions.min())}, {int(positions.max())}]")
            return self.row_embed(positions[..., 0]) + self.col_embed(positions[..., 1])
        return sinusoidal_2d(positions, self.cls_token.shape[0])

    def forward(self, patches: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Aggregate patch tokens into region vectors.

        Args:
            patches: ``(N, P, hidden_dim)`` patch tokens of ``N`` regions, ``P`` grid slots each.
            positions: ``(N, P, 2)`` long (row, col) of each slot in the region grid.
            mask: ``(N, P)`` bool, True where the grid slot holds a real patch (default: all).

        Returns:
            ``(N, hidden_dim)`` the CLS outputs; masked slots do not influence them. A region
            with no real patch gets the (finite) CLS-only output.
        """
        n, p, _ = patches.shape
        if positions.shape != (n, p, 2):
            raise ValueError(f"positions must be {(n, p, 2)}, got {tuple(positions.shape)}")
        if mask is None:
            mask = torch.ones(n, p, dtype=torch.bool, device=patches.device)
        mask = mask.to(torch.bool)
        x = patches + self.position_embedding(positions).to(patches.dtype)
        cls = self.cls_token.to(x.dtype).expand(n, 1, -1)
        x = torch.cat([cls, x], dim=1)
        keep = torch.cat([mask.new_ones(n, 1), mask], dim=1)
        x = self.encoder(x, src_key_padding_mask=~keep)
        return self.norm(x[:, 0])


class SlideAggregator(nn.Module):
    """Attention pooling of region vectors into one slide vector.

    A learned query attends (``num_heads`` heads) over LayerNorm-ed region vectors, optionally
    plus a projected sinusoidal encoding of each region's position on the slide; a residual
    feed-forward block and a LayerNorm follow.
    """

    def __init__(self, config: HierarchyConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.heads = config.num_heads
        self.head_dim = dim // self.heads
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key_norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.position = nn.Linear(dim, dim) if dim % 4 == 0 else None
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.ffn_dim, dim)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        regions: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        *,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool region vectors.

        Args:
            regions: ``(B, R, hidden_dim)`` region vectors of ``B`` slides.
            mask: ``(B, R)`` bool, True for real regions (default: all); every slide needs one.
            positions: optional ``(B, R, 2)`` (row, col) of the regions on the slide's region grid.
            return_weights: also return the attention weights.

        Returns:
            ``(B, hidden_dim)`` slide vectors, and with ``return_weights`` the ``(B, R)`` attention
            weights averaged over heads (0 at padded regions, rows sum to 1).
        """
        b, r, dim = regions.shape
        if mask is None:
            mask = torch.ones(b, r, dtype=torch.bool, device=regions.device)
        mask = mask.to(torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("SlideAggregator: every slide needs at least one unmasked region")
        x = self.key_norm(regions)
        if positions is not None:
            if self.position is None:
                raise ValueError("SlideAggregator: region positions need hidden_dim divisible by 4")
            x = x + self.position(sinusoidal_2d(positions, dim).to(x.dtype))
        k = self.key(x).view(b, r, self.heads, self.head_dim).transpose(1, 2)  # (B, h, R, d)
        v = self.value(x).view(b, r, self.heads, self.head_dim).transpose(1, 2)
        q = self.query.to(x.dtype).view(1, self.heads, 1, self.head_dim)
        scores = (q * k).sum(-1) / self.head_dim**0.5  # (B, h, R)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = F.softmax(scores, dim=-1)
        pooled = (self.dropout(weights)[..., None] * v).sum(2).reshape(b, dim)  # (B, dim)
        y = self.query.to(x.dtype) + self.out(pooled)
        y = y + self.ffn(self.ffn_norm(y))
        y = self.norm(y)
        if return_weights:
            return y, weights.mean(1)
        return y
