"""Region prompts for MedPLIB-style grounding: mask geometry and region tokens.

Geometry follows SAM's ``ResizeLongestSide``: an ``H×W`` image is scaled so its longest side
is ``target`` and padded to ``target×target``, either **centred** (MedPLIB:
``pad_top = pad_h // 2``) or bottom/right (SAM proper). :func:`unpad_and_resize` undoes it for
predicted logits. :func:`mask_to_grid` turns a region mask into the fraction of each
vision-encoder patch it covers, and :class:`RegionEncoder` pools the covered patch features
into region tokens in the LLM's hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from skimage.draw import polygon as _draw_polygon
from torch import nn

__all__ = [
    "RegionEncoder",
    "mask_to_grid",
    "pad_geometry",
    "polygon_mask",
    "resize_longest_side",
    "to_model_mask",
    "unpad_and_resize",
]


def resize_longest_side(image_hw: tuple[int, int], target: int) -> tuple[int, int, float]:
    """``(new_h, new_w, scale)`` with the longest side scaled to ``target`` (SAM rounding)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0 or target <= 0:
        raise ValueError(f"sizes must be positive, got image {h}x{w} and target {target}")
    scale = target / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)), scale


def pad_geometry(new_hw: tuple[int, int], target: int, centred: bool) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` padding of a resized ``new_hw`` image to ``target²``."""
    pad_h, pad_w = target - int(new_hw[0]), target - int(new_hw[1])
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"resized size {tuple(new_hw)} exceeds the target {target}")
    if centred:
        top, left = pad_h // 2, pad_w // 2
        return top, left, pad_h - top, pad_w - left
    return 0, 0, pad_h, pad_w


def _as_mask(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if t.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {tuple(t.shape)}")
    return (t != 0).float()


def to_model_mask(
    mask_bool_hw: np.ndarray | torch.Tensor, target: int, centred: bool = True
) -> torch.Tensor:
    """Resize a binary mask by its longest side (nearest) and pad it to ``(target, target)``."""
    m = _as_mask(mask_bool_hw)
    new_h, new_w, _ = resize_longest_side((m.shape[0], m.shape[1]), target)
    m = F.interpolate(m[None, None], size=(new_h, new_w), mode="nearest-exact")[0, 0]
    top, left, bottom, right = pad_geometry((new_h, new_w), target, centred)
    return F.pad(m, (left, right, top, bottom))


def unpad_and_resize(
    logits: torch.Tensor, original_hw: tuple[int, int], target: int, centred: bool = True
) -> torch.Tensor:
    """Map ``(..., h', w')`` logits at model resolution back to ``(..., H, W)``.

    Logits not at ``target×target`` (e.g. SAM's low-res 256² output for a 1024 input) are first
    resized bilinearly to ``target²``; the padding is then cropped and the rest resized
    bilinearly to the original size.
    """
    if logits.ndim < 2:
        raise ValueError(f"logits must be at least 2-D, got shape {tuple(logits.shape)}")
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    if tuple(x.shape[-2:]) != (target, target):
        x = F.interpolate(x, size=(target, target), mode="bilinear", align_corners=False)
    new_h, new_w, _ = resize_longest_side(original_hw, target)
    top, left, _, _ = pad_geometry((new_h, new_w), target, centred)
    x = x[..., top : top + new_h, left : left + new_w]
    x = F.interpolate(
        x, size=(int(original_hw[0]), int(original_hw[1])), mode="bilinear", align_corners=False
    )
    return x.reshape(*lead, *x.shape[-2:])


def polygon_mask(
    points_xy: Sequence[Sequence[float]] | np.ndarray, size_hw: tuple[int, int]
) -> np.ndarray:
    """Boolean ``size_hw`` mask of the polygon with vertices ``(x, y)`` = ``(col, row)``."""
    pts = np.asarray(points_xy, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 (x, y) points, got shape {pts.shape}")
    h, w = int(size_hw[0]), int(size_hw[1])
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    if not inside.any():
        raise ValueError(f"all polygon points lie outside the {w}x{h} (WxH) image")
    rr, cc = _draw_polygon(y, x, shape=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[rr, cc] = True
    if not mask.any():
        raise ValueError("the polygon covers no pixel (degenerate points)")
    return mask


def mask_to_grid(
    mask_bool_hw: np.ndarray | torch.Tensor,
    grid_hw: tuple[int, int],
    *,
    centred: bool = True,
    input_size: int,
    image_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Fraction of each vision-encoder patch covered by the mask, as ``(gh, gw)`` float.

    The mask is resized by its longest side to ``input_size`` with area averaging (so a thin
    region keeps a fractional weight instead of vanishing under nearest sampling), padded like
    the image, and average-pooled to the patch grid.
    """
    m = _as_mask(mask_bool_hw)
    h, w = m.shape
    if image_hw is not None and (h, w) != (int(image_hw[0]), int(image_hw[1])):
        raise ValueError(
            f"mask is {w}x{h} but the image is {int(image_hw[1])}x{int(image_hw[0])} (WxH)"
        )
    if not bool(m.any()):
        raise ValueError("the region mask is empty")
    new_h, new_w, _ = resize_longest_side((h, w), input_size)
    r = F.interpolate(m[None, None], size=(new_h, new_w), mode="area")
    top, left, bottom, right = pad_geometry((new_h, new_w), input_size, centred)
    r = F.pad(r, (left, right, top, bottom))
    return F.adaptive_avg_pool2d(r, (int(grid_hw[0]), int(grid_hw[1])))[0, 0].clamp_(0.0, 1.0)


class RegionEncoder(nn.Module):
    """Region tokens ``(B, K, llm_dim)`` from patch features and patch coverage weights.

    ``mode="single"``: coverage-weighted mean of the patch features, projected by :attr:`proj`
    (one token). ``mode="multi"``: ``num_tokens`` learned queries cross-attend over the covered
    patches only (uncovered patches are masked out; ``log(coverage)`` is added to the scores),
    then :attr:`proj`. ``mlp_depth`` 1 is a Linear, 2 is Linear-GELU-Linear (LLaVA style).
    """

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        mode: Literal["single", "multi"] = "single",
        num_tokens: int = 1,
        num_heads: int = 8,
        mlp_depth: int = 1,
    ) -> None:
        super().__init__()
        if mode not in ("single", "multi"):
            raise ValueError(f"mode must be 'single' or 'multi', got {mode!r}")
        if mode == "single" and num_tokens != 1:
            raise ValueError("mode='single' produces exactly one token; use mode='multi'")
        if num_tokens < 1 or mlp_depth not in (1, 2):
            raise ValueError("num_tokens must be >= 1 and mlp_depth 1 or 2")
        self.mode, self.num_tokens = mode, num_tokens
        self.num_heads = num_heads
        if mode == "multi":
            self.queries = nn.Parameter(torch.randn(num_tokens, vision_dim) * vision_dim**-0.5)
            self.attn = nn.MultiheadAttention(vision_dim, num_heads, batch_first=True)
            self.norm = nn.LayerNorm(vision_dim)
        layers: list[nn.Module] = [nn.Linear(vision_dim, llm_dim)]
        if mlp_depth == 2:
            layers += [nn.GELU(), nn.Linear(llm_dim, llm_dim)]
        self.proj = layers[0] if mlp_depth == 1 else nn.Sequential(*layers)

    def forward(self, patch_features: torch.Tensor, grid_weights: torch.Tensor) -> torch.Tensor:
        """``patch_features`` ``(B, gh*gw, D)``, ``grid_weights`` ``(B, gh, gw)`` → ``(B, K, L)``."""
        if patch_features.ndim != 3 or grid_weights.ndim != 3:
            raise ValueError("expected features (B, N, D) and weights (B, gh, gw)")
        b, n, _ = patch_features.shape
        w = grid_weights.reshape(grid_weights.shape[0], -1).to(patch_features.dtype)
        if w.shape != (b, n):
            raise ValueError(
                f"weights {tuple(grid_weights.shape)} do not match {n} patches of batch {b}"
            )
        if (w < 0).any():
            raise ValueError("coverage weights must be non-negative")
        empty = (w.sum(dim=1) <= 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"the region mask is empty for batch items {empty}")
        if self.mode == "single":
            pooled = (w.unsqueeze(-1) * patch_features).sum(dim=1) / w.sum(dim=1, keepdim=True)
            return self.proj(pooled).unsqueeze(1)
        covered = w > 0
        # float key_padding_mask is added to the scores: -inf drops uncovered patches exactly
        bias = torch.where(covered, w.clamp_min(1e-12).log(), torch.full_like(w, float("-inf")))
        # zero the uncovered features too, so even non-finite values there cannot leak in
        feats = patch_features.masked_fill(~covered.unsqueeze(-1), 0.0)
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        out, _ = self.attn(q, feats, feats, key_padding_mask=bias, need_weights=False)
        return self.proj(self.norm(out))
