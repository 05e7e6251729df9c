"""Small building blocks shared by the hierarchy modules: transformer stacks and 2-D positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_2d", "transformer_encoder"]


def transformer_encoder(dim: int, heads: int, layers: int, ffn_dim: int, dropout: float) -> nn.TransformerEncoder:
    """A pre-norm, batch-first GELU transformer encoder without positional encodings.

    Nested-tensor fast paths are disabled so that padded keys never change the outputs at
    real positions (tests rely on padding invariance).
    """
    layer = nn.TransformerEncoderLayer(
        d_model=dim,
        nhead=heads,
        dim_feedforward=ffn_dim,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


def sinusoidal_2d(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Fixed 2-D sine/cosine encodings of (row, col) positions.

    Args:
        positions: ``(..., 2)`` integer or float (row, col).
        dim: output width; must be divisible by 4 (half for rows, half for columns).
        base: wavelength base.

    Returns:
        ``(..., dim)`` float32: ``[sin(row f), cos(row f), sin(col f), cos(col f)]``.
    """
    if dim % 4:
        raise ValueError(f"sinusoidal_2d: dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(base) * torch.arange(quarter, device=positions.device, dtype=torch.float32) / quarter)
    pos = positions.to(torch.float32)
    row = pos[..., 0:1] * freqs
    col = pos[..., 1:2] * freqs
    return torch.cat([row.sin(), row.cos(), col.sin(), col.cos()], dim=-1)
