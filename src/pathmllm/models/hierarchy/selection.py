"""Choose which patches (in a region) and which regions (in a slide) the slide LLM reads.

A whole slide holds hundreds of regions and each region hundreds of patches: far more than an
LLM context holds. Selection keeps ``k`` of them, trading two goals:

* **diversity**: greedy farthest-point sampling in cosine distance, so near-duplicate tiles
  (the same stroma over and over) are not all kept;
* **relevance**: when a question embedding is given, cosine similarity to it.

Each greedy step picks the candidate with the highest score
``(1 - w) * min_cosine_distance_to_selected + w * cos(question)``, with ``w`` the
``relevance_weight`` (``w`` is ignored without a question). The first pick is the most relevant
candidate, or without a question the candidate closest to the (masked) mean. Ties go to the
lowest index, so the result is deterministic.

Both functions accept NumPy arrays or torch tensors and return indices of the same kind
(``int64`` NumPy array, or a ``long`` tensor on the input's device), in selection order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["select_patches", "select_regions", "take_regions"]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _greedy_select(
    features: Any,
    k: int,
    question_vec: Any | None,
    relevance_weight: float,
    mask: Any | None,
    what: str,
) -> Any:
    is_torch = hasattr(features, "detach")
    device = getattr(features, "device", None)
    feats = _to_numpy(features, what)
    if feats.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (count, dim), got shape {feats.shape}")
    n, dim = feats.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not 0.0 <= relevance_weight <= 1.0:
        raise ValueError(f"relevance_weight must be in [0, 1], got {relevance_weight}")
    if mask is None:
        valid = np.ones(n, dtype=bool)
    else:
        if hasattr(mask, "detach"):
            mask = mask.detach().cpu().numpy()
        valid = np.asarray(mask).astype(bool)
        if valid.shape != (n,):
            raise ValueError(f"mask must have shape ({n},) to match {what} {feats.shape}, got {valid.shape}")
    relevance = None
    if question_vec is not None:
        q = _to_numpy(question_vec, "question_vec").reshape(-1)
        if q.shape[0] != dim:
            raise ValueError(f"question_vec has length {q.shape[0]}, but {what} have dimension {dim}; "
                             "embed the question into the same space as the features")
        relevance = _unit(feats) @ _unit(q)

    candidates = np.flatnonzero(valid)
    if k >= candidates.size:
        chosen = candidates
    elif k == 0:
        chosen = np.zeros(0, dtype=np.int64)
    else:
        unit = _unit(feats[candidates])
        rel = relevance[candidates] if relevance is not None else None
        if rel is not None:
            first = int(np.argmax(rel))
        else:
            first = int(np.argmax(unit @ _unit(unit.mean(0))))
        w = relevance_weight if rel is not None else 0.0
        picked = [first]
        taken = np.zeros(candidates.size, dtype=bool)
        taken[first] = True
        min_dist = 1.0 - unit @ unit[first]  # cosine distance to the nearest selected, (n_valid,)
        for _ in range(k - 1):
            score = (1.0 - w) * min_dist
            if rel is not None:
                score = score + w * rel
            score = np.where(taken, -np.inf, score)
            nxt = int(np.argmax(score))
            picked.append(nxt)
            taken[nxt] = True
            min_dist = np.minimum(min_dist, 1.0 - unit @ unit[nxt])
        chosen = candidates[np.asarray(picked)]
    chosen = np.asarray(chosen, dtype=np.int64)
    if is_torch:
        import torch

        return torch.as_tensor(chosen, dtype=torch.long, device=device)
    return chosen


def select_patches(
    features: Any,
    k: int,
    question_vec: Any | None = None,
    relevance_weight: float = 0.5,
    mask: Any | None = None,
) -> Any:
    """Pick ``k`` diverse (and, given a question, relevant) patches of one region.

    Args:
        features: ``(num_patches, dim)`` patch features (NumPy or torch).
        k: how many to keep; ``k >= number of valid patches`` returns all valid indices in
            ascending order, ``k == 0`` an empty result.
        question_vec: optional ``(dim,)`` question embedding in the same space as ``features``.
        relevance_weight: ``w`` in ``(1 - w) * diversity + w * relevance`` (only with a question).
        mask: optional ``(num_patches,)`` bool, True for patches that may be picked.

    Returns:
        ``(min(k, valid),)`` int64 indices into ``features``, in selection order.
    """
    return _greedy_select(features, k, question_vec, relevance_weight, mask, "patch features")


def select_regions(
    region_vectors: Any,
    k: int,
    question_vec: Any | None = None,
    relevance_weight: float = 0.5,
    mask: Any | None = None,
) -> Any:
    """Pick ``k`` diverse (and relevant) regions of a slide so the slide fits the LLM context.

    ``region_vectors`` is ``(num_regions, dim)`` (e.g. the mean patch feature of each region, or
    the region aggregator's output); the other arguments are as in :func:`select_patches`.
    """
    return _greedy_select(region_vectors, k, question_vec, relevance_weight, mask, "region vectors")


def take_regions(batch: Any, indices: list[Any]) -> Any:
    """A :class:`~pathmllm.models.hierarchy.HierarchyBatch` keeping only the chosen regions.

    Args:
        batch: the padded batch with ``R`` regions per slide.
        indices: one 1-D index tensor per slide (e.g. from :func:`select_regions`); slides with
            fewer indices than the longest are padded with masked-out regions.

    Returns:
        A batch with ``R' = max(len(i) for i in indices)`` regions per slide.
    """
    import torch

    from pathmllm.models.hierarchy.encoder import HierarchyBatch

    b = batch.region_mask.shape[0]
    if len(indices) != b:
        raise ValueError(f"indices holds {len(indices)} index lists but the batch has {b} slides")
    idx = [torch.as_tensor(i, dtype=torch.long, device=batch.region_mask.device).reshape(-1) for i in indices]
    width = max(1, max(int(i.numel()) for i in idx))
    gather = torch.zeros(b, width, dtype=torch.long, device=batch.region_mask.device)
    keep = torch.zeros(b, width, dtype=torch.bool, device=batch.region_mask.device)
    for s, i in enumerate(idx):
        if i.numel() and (i.min() < 0 or i.max() >= batch.region_mask.shape[1]):
            raise IndexError(f"slide {s}: region index out of range 0..{batch.region_mask.shape[1] - 1}")
        gather[s, : i.numel()] = i
        keep[s, : i.numel()] = True
    rows = torch.arange(b, device=gather.device)[:, None]

    def pick(t: Any) -> Any:
        return None if t is None else t[rows, gather]

    return HierarchyBatch(
        cell_features=pick(batch.cell_features),
        cell_mask=pick(batch.cell_mask),
        patch_features=pick(batch.patch_features),
        patch_mask=pick(batch.patch_mask),
        patch_positions=pick(batch.patch_positions),
        region_mask=pick(batch.region_mask).to(torch.bool) & keep,
        region_positions=pick(batch.region_positions),
    )
