"""A weight-free encoder of colour, texture and nucleus-density statistics.

For CPU demos and as a sanity baseline: if a foundation model does not beat these 20
numbers on a task, something is wrong. Computed on the batch in torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pathmllm.encoders.base import EncoderSpec, PatchEncoder
from pathmllm.encoders.registry import register_encoder

#: Ruifrok & Johnston's H&E(-DAB) stain vectors (rows: haematoxylin, eosin, DAB), as skimage.color
_HED_FROM_RGB = torch.linalg.inv(torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))

FEATURE_NAMES = (
    "r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std",
    "saturation_mean", "saturation_std",
    "hematoxylin_mean", "hematoxylin_std", "eosin_mean", "eosin_std",
    "gradient_mean", "gradient_std", "laplacian_var", "grey_entropy",
    "neighbour_diff_x", "neighbour_diff_y",
    "nuclear_fraction", "nuclei_per_100um2px",
)

SPEC = EncoderSpec(
    "handcrafted", "handcrafted", len(FEATURE_NAMES), input_size=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    mpp=None, licence="Apache-2.0", needs_weights=False, architecture="colour, texture, nucleus statistics",
    description="20 weight-free features: RGB/HSV/H&E colour, gradients, entropy, nuclear density",
)


class HandcraftedEncoder(PatchEncoder):
    """Input: RGB in [0, 1] (``preprocess`` with mean 0, std 1). Output: ``(B, 20)``."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__(spec, None)
        self.register_buffer("_hed", _HED_FROM_RGB.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0, 1)
        b = x.shape[0]
        flat = x.flatten(2)
        rgb_mean, rgb_std = flat.mean(-1), flat.std(-1)
        mx, mn = x.max(dim=1).values, x.min(dim=1).values
        sat = ((mx - mn) / mx.clamp_min(1e-6)).flatten(1)
        od = torch.clamp(-torch.log((x * 255.0).clamp_min(1.0) / 255.0), min=0)  # optical density
        hed = torch.einsum("bchw,cd->bdhw", od, self._hed)
        h, e = hed[:, 0].flatten(1), hed[:, 1].flatten(1)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        gx = grey[..., :, 1:] - grey[..., :, :-1]
        gy = grey[..., 1:, :] - grey[..., :-1, :]
        grad = (gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).sqrt().flatten(1)
        lap_kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device).view(1, 1, 3, 3)
        lap = torch.nn.functional.conv2d(grey, lap_kernel).flatten(1)
        hist = torch.stack([torch.histc(g, bins=32, min=0, max=1) for g in grey.flatten(1)])
        p = hist / hist.sum(-1, keepdim=True).clamp_min(1)
        entropy = -(p * (p.clamp_min(1e-12)).log2()).sum(-1)
        nuclear = h > (h.mean(-1, keepdim=True) + h.std(-1, keepdim=True)).clamp_min(0.15)
        counts = torch.tensor([_blob_count(m.view(x.shape[-2:]).cpu().numpy()) for m in nuclear],
                              device=x.device, dtype=torch.float32)
        n_px = float(x.shape[-1] * x.shape[-2])
        feats = [
            rgb_mean, rgb_std,
            sat.mean(-1, keepdim=True), sat.std(-1, keepdim=True),
            h.mean(-1, keepdim=True), h.std(-1, keepdim=True), e.mean(-1, keepdim=True), e.std(-1, keepdim=True),
            grad.mean(-1, keepdim=True), grad.std(-1, keepdim=True), lap.var(-1, keepdim=True), entropy.unsqueeze(-1),
            gx.abs().flatten(1).mean(-1, keepdim=True), gy.abs().flatten(1).mean(-1, keepdim=True),
            nuclear.float().mean(-1, keepdim=True), (counts * 10_000.0 / n_px).view(b, 1),
        ]
        return torch.cat(feats, dim=-1)


def _blob_count(mask: np.ndarray, min_px: int = 12) -> int:
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_px).sum())


@register_encoder(SPEC)
def _build(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
    return HandcraftedEncoder(spec)
