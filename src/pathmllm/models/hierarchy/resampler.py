"""Learned-query resampler: a fixed number of slide tokens from any number of input tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LearnedQueryResampler"]


class _ResamplerBlock(nn.Module):
    """Latents cross-attend to ``[tokens; latents]`` (Flamingo), then a feed-forward block."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.latent_norm = nn.LayerNorm(dim)
        self.token_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, latents: Tensor, tokens: Tensor, keep: Tensor) -> Tensor:
        """latents ``(B, N, D)``, tokens ``(B, T, D)``, keep ``(B, T)`` bool → ``(B, N, D)``."""
        q = self.latent_norm(latents)
        kv = torch.cat([self.token_norm(tokens), q], dim=1)
        keep_all = torch.cat([keep, keep.new_ones(q.shape[:2])], dim=1)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=~keep_all, need_weights=False)
        latents = latents + attended
        return latents + self.ffn(self.ffn_norm(latents))


class LearnedQueryResampler(nn.Module):
    """Perceiver-style resampler: ``num_queries`` learned queries read the input tokens.

    The keys of each cross-attention are the input tokens plus the latents themselves, so a
    fully padded input still yields finite outputs (the learned queries, transformed).
    """

    def __init__(self, dim: int, num_queries: int, heads: int = 8, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.blocks = nn.ModuleList(_ResamplerBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def num_queries(self) -> int:
        """Number of output tokens."""
        return self.latents.shape[0]

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Resample tokens.

        Args:
            tokens: ``(B, T, dim)`` input tokens (any ``T``, possibly 0).
            mask: ``(B, T)`` bool, True for real tokens (default: all); padded tokens have no
                influence on the output.

        Returns:
            ``(B, num_queries, dim)``.
        """
        b, t, _ = tokens.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=tokens.device)
        keep = mask.to(torch.bool)
        latents = self.latents.to(tokens.dtype).expand(b, -1, -1)
        for block in self.blocks:
            latents = block(latents, tokens, keep)
        return self.norm(latents)
