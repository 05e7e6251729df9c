"""Cell-Cell Attention Fusion (CCAF): one token per patch from the patch's cells.

A trainable transformer over the patch's cell feature vectors (not the frozen off-the-shelf ViT
of the authors' release). There are no positional encodings, so the output is invariant to the
order of the cells; padded cells are excluded with a key-padding mask; a patch without any cell
is represented by a learned *empty* token, processed by the same transformer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathmllm.models.hierarchy.config import HierarchyConfig
from pathmllm.models.hierarchy.layers import transformer_encoder

__all__ = ["CellCellAttentionFusion"]


class CellCellAttentionFusion(nn.Module):
    """Fuses a variable number of cells into one cell token per patch.

    ``[CLS, cell_1 .. cell_C]`` → input projection (cells only) → transformer (no positions) →
    final LayerNorm → the CLS output. For a patch with no valid cell the sequence is
    ``[CLS, empty]`` where ``empty`` is a learned token in the hidden space.
    """

    def __init__(self, config: HierarchyConfig) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.input_proj = nn.Sequential(nn.Linear(config.cell_feature_dim, dim), nn.LayerNorm(dim))
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.empty_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.encoder = transformer_encoder(dim, config.num_heads, config.ccaf_layers, config.ffn_dim, config.dropout)
        self.norm = nn.LayerNorm(dim)

    def encode_tokens(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """Run the transformer on already-embedded cell tokens.

        Args:
            tokens: ``(N, C, hidden)`` embedded cells.
            valid: ``(N, C)`` bool, True for real cells; every row needs at least one True.

        Returns:
            ``(N, hidden)`` the CLS outputs.
        """
        n = tokens.shape[0]
        cls = self.cls_token.to(tokens.dtype).expand(n, 1, -1)
        x = torch.cat([cls, tokens], dim=1)
        keep = torch.cat([valid.new_ones(n, 1), valid], dim=1)
        x = self.encoder(x, src_key_padding_mask=~keep)
        return self.norm(x[:, 0])

    def empty_output(self) -> Tensor:
        """``(hidden,)``: the token every patch without cells receives."""
        tokens = self.empty_token.view(1, 1, -1)
        return self.encode_tokens(tokens, torch.ones(1, 1, dtype=torch.bool, device=tokens.device))[0]

    def forward(self, cells: Tensor, mask: Tensor | None = None) -> Tensor:
        """Cell tokens of a batch of patches.

        Args:
            cells: ``(N, C, cell_feature_dim)`` cell features of ``N`` patches, padded to ``C``
                cells (``C`` may be 0).
            mask: ``(N, C)`` bool, True for real cells (default: all real).

        Returns:
            ``(N, hidden_dim)`` one token per patch, invariant to the order of the real cells and
            to the padded cells' values.
        """
        if cells.ndim != 3:
            raise ValueError(f"CCAF expects cells of shape (patches, cells, features), got {tuple(cells.shape)}")
        n, c, _ = cells.shape
        if mask is None:
            mask = torch.ones(n, c, dtype=torch.bool, device=cells.device)
        mask = mask.to(torch.bool)
        if c == 0:  # room for the empty token
            cells = cells.new_zeros(n, 1, cells.shape[-1])
            mask = mask.new_zeros(n, 1)
        tokens = self.input_proj(cells)
        empty = ~mask.any(dim=1)  # (N,)
        # patches without cells: slot 0 becomes the learned empty token, the only valid key
        slot0 = torch.zeros_like(mask)
        slot0[:, 0] = True
        use_empty = empty[:, None] & slot0  # (N, C)
        tokens = torch.where(use_empty[..., None], self.empty_token.to(tokens.dtype), tokens)
        valid = mask | use_empty
        return self.encode_tokens(tokens, valid)
