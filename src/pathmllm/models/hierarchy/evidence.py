"""Evidence for a slide answer: which regions and patches support it, and a heatmap.

The hierarchical contrastive loss puts the projected patch and region tokens and the projected
text vectors (:meth:`HierarchicalSlideLM.embed_texts`) in one space. A patch's (region's)
evidence score for an answer is the cosine similarity between its projected token and the
answer's text vector; the slide aggregator's attention weight of each region is reported beside
it. For a multiple-choice answer the score is contrastive: the cosine to the chosen option's text
minus the highest cosine to another option's, so evidence is what supports *this* answer over
the others. Coordinates are level-0 pixels, as in ``coords.h5``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Evidence", "heatmap_image", "score_evidence"]


@dataclass
class Evidence:
    """Ranked regions and patches (best first) and every read patch's score."""

    regions: list[dict[str, Any]]
    """``region_index, row, col, x, y, width, height, score, attention`` of the top regions."""
    patches: list[dict[str, Any]]
    """``patch_index, region_index, x, y, size, score`` of the top patches."""
    patch_coords: np.ndarray = field(repr=False)
    """``(N, 2)`` level-0 (x, y) of every patch the model read."""
    patch_scores: np.ndarray = field(repr=False)
    """``(N,)`` their evidence scores (cosine similarity in [-1, 1]; with alternatives, the
    margin over the best alternative, in [-2, 2])."""
    patch_size_level0: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"regions": self.regions, "patches": self.patches}


def score_evidence(
    hierarchy: Any,
    output: Any,
    text_vector: torch.Tensor,
    *,
    index: int = 0,
    top_regions: int = 5,
    top_patches: int = 10,
    alternatives: torch.Tensor | None = None,
) -> Evidence:
    """Rank the regions and patches of slide ``index`` of a batch by support for ``text_vector``.

    Args:
        hierarchy: the :class:`~pathmllm.models.hierarchy.store_batch.SlideHierarchy` the batch
            row was collated from (for ids and coordinates).
        output: the encoder's :class:`~pathmllm.models.hierarchy.HierarchyOutput` for the batch.
        text_vector: ``(L,)`` projected text vector of the answer.
        index: row of the slide in the batch.
        alternatives: optional ``(m, L)`` text vectors of the answers *not* given (the other
            options of a multiple-choice question). Scores then become contrastive: the cosine
            to the answer minus the highest cosine to an alternative, so a patch ranks high when
            it supports this answer *rather than* the others, not merely when it is tissue.
    """
    text = F.normalize(text_vector.detach().float().reshape(1, -1), dim=-1)
    alt = None if alternatives is None or not len(alternatives) else F.normalize(
        alternatives.detach().float().reshape(len(alternatives), -1), dim=-1)

    def score(tokens: torch.Tensor) -> np.ndarray:
        t = F.normalize(tokens, dim=-1)
        s = (t @ text.T).squeeze(1)
        if alt is not None:
            s = s - (t @ alt.T).max(1).values
        return s.cpu().numpy()

    n_regions = hierarchy.n_regions
    width = output.tokens["patch"].shape[1] // output.tokens["region"].shape[1]
    patch_tok = output.tokens["patch"][index].detach().float().view(-1, width, text.shape[1])
    region_tok = output.tokens["region"][index, :n_regions].detach().float()
    region_scores = score(region_tok)
    attention = output.region_weights[index, :n_regions].detach().float().cpu().numpy()
    size = int(hierarchy.attrs.get("patch_size_level0", 0) or 0)

    coords, scores, rows = [], [], []
    for j in range(n_regions):
        k = len(hierarchy.patch_indices[j])
        scores.append(score(patch_tok[j, :k]))
        coords.append(hierarchy.patch_coords[j])
        rows.extend((j, q) for q in range(k))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_coords = np.concatenate(coords) if coords else np.zeros((0, 2), np.int64)

    regions = []
    for j in np.argsort(-region_scores, kind="stable")[:top_regions]:
        pc = hierarchy.patch_coords[j]
        x0, y0 = pc.min(0)
        x1, y1 = pc.max(0) + size
        regions.append({
            "region_index": int(hierarchy.region_ids[j]),
            "row": int(hierarchy.region_positions[j][0]), "col": int(hierarchy.region_positions[j][1]),
            "x": int(x0), "y": int(y0), "width": int(x1 - x0), "height": int(y1 - y0),
            "score": round(float(region_scores[j]), 4), "attention": round(float(attention[j]), 4),
        })
    patches = []
    for i in np.argsort(-all_scores, kind="stable")[:top_patches]:
        j, q = rows[i]
        patches.append({
            "patch_index": int(hierarchy.patch_indices[j][q]), "region_index": int(hierarchy.region_ids[j]),
            "x": int(all_coords[i][0]), "y": int(all_coords[i][1]), "size": size,
            "score": round(float(all_scores[i]), 4),
        })
    return Evidence(regions, patches, all_coords, all_scores, size)


def _colormap(t: np.ndarray) -> np.ndarray:
    """Blue (0) → yellow (0.5) → red (1), ``(n,)`` in [0, 1] → ``(n, 3)`` uint8."""
    t = np.clip(t, 0, 1)[:, None]
    blue, yellow, red = np.array([40, 70, 230]), np.array([250, 220, 40]), np.array([220, 30, 30])
    low = blue + (yellow - blue) * (t / 0.5)
    high = yellow + (red - yellow) * ((t - 0.5) / 0.5)
    return np.where(t < 0.5, low, high).astype(np.uint8)


def heatmap_image(
    thumbnail: str | os.PathLike[str] | np.ndarray,
    level0_width: int,
    evidence: Evidence,
    alpha: float = 0.55,
) -> Any:
    """The patches' evidence scores over the slide thumbnail (min-max scaled; unread area untinted)."""
    from PIL import Image, ImageDraw

    img = (Image.open(Path(thumbnail)) if not isinstance(thumbnail, np.ndarray) else Image.fromarray(thumbnail))
    img = img.convert("RGB")
    if not len(evidence.patch_scores):
        return img
    f = img.width / float(level0_width)
    s = evidence.patch_scores
    span = float(s.max() - s.min())
    t = (s - s.min()) / span if span > 0 else np.full_like(s, 0.5)
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    a = int(255 * alpha)
    for (x, y), colour in zip(evidence.patch_coords, _colormap(t), strict=True):
        box = [x * f, y * f, (x + evidence.patch_size_level0) * f - 1, (y + evidence.patch_size_level0) * f - 1]
        draw.rectangle(box, fill=(*map(int, colour), a))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
