"""Training losses.

Contrastive part (MLLM4PUE-style universal embeddings)
------------------------------------------------------

:func:`info_nce` is the symmetric InfoNCE loss over cosine similarity used to train the
universal embedder: each query must pick its own positive among all positives of the *global*
batch (every process's positives, gathered with their gradient), optionally among hard negatives
too. :func:`gather_with_grad` is the differentiable all-gather underneath it.

Gradient-scaling convention (read this before training with several processes)
    With ``gather=True`` under an initialised process group of ``world_size`` W, every rank
    returns the **same value**: the single-process loss on the global batch (the concatenation of
    the ranks' local batches in rank order). Its **gradient**, however, is that of
    ``W * (this rank's share of the global loss)``, and :func:`gather_with_grad`'s backward
    **sums** the gradients that all ranks send to a rank's rows. Together: the per-rank
    gradients *summed* over ranks equal ``W * dL/dθ``, so the *average* over ranks (what
    ``DistributedDataParallel``, FSDP, DeepSpeed and ``accelerate`` all do) is exactly
    ``dL/dθ``, the single-process gradient on the global batch. Call ``loss.backward()`` (or
    ``accelerator.backward(loss)``) on every rank, and do not rescale by the world size. This is
    the convention of open_clip's ``gather_with_grad=True`` training, at the cost of one
    ``(local_batch, global_batch)`` logit block per direction instead of the whole
    ``(global_batch, global_batch)`` matrix on every rank.

Every call with ``gather=True`` under a process group is a collective: all ranks must call it,
in the same order, with the same arguments (``negatives`` given on all ranks or none). Local
batch sizes may differ between ranks (they are gathered first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["InfoNCEConfig", "gather_with_grad", "info_nce"]


# --------------------------------------------------------------------------------------------
# distributed helpers


def _distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _gather_sizes(n: int, device: torch.device, group: dist.ProcessGroup | None) -> list[int]:
    """The first-dimension size on every rank, in rank order."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, local, group=group)
    return [int(s.item()) for s in sizes]


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (sizes may differ by rank); backward sums over ranks.

    Forward: pad the local tensor to the largest size, ``all_gather``, drop the padding and
    concatenate in rank order. Backward: ``all_reduce(SUM)`` the gradient of the gathered tensor
    and return this rank's slice, i.e. the gradient that *all* ranks' objectives send to this
    rank's rows (a reduce-scatter; gloo has none, hence the all-reduce).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        sizes: Sequence[int],
        group: dist.ProcessGroup | None,
    ) -> Tensor:
        rank = dist.get_rank(group)
        largest = max(sizes)
        x = x.contiguous()
        if x.shape[0] < largest:
            pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
            x = torch.cat([x, pad])
        buffers = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(buffers, x, group=group)
        ctx.sizes = tuple(sizes)  # type: ignore[attr-defined]
        ctx.rank = rank  # type: ignore[attr-defined]
        ctx.group = group  # type: ignore[attr-defined]
        return torch.cat([b[:n] for b, n in zip(buffers, sizes)])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None, None]:
        sizes: tuple[int, ...] = ctx.sizes  # type: ignore[attr-defined]
        rank: int = ctx.rank  # type: ignore[attr-defined]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)  # type: ignore[attr-defined]
        start = sum(sizes[:rank])
        return grad[start : start + sizes[rank]], None, None


def gather_with_grad(x: Tensor, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """All-gather ``x`` along dim 0 from every rank, keeping the gradient path.

    Args:
        x: ``(local_n, ...)``; ``local_n`` may differ between ranks, the other dims may not.
        group: process group (default: the default group).

    Returns:
        ``(sum of local_n over ranks, ...)``, the ranks' tensors concatenated in rank order.
        ``x`` itself when no process group is initialised or it has one rank.

    The backward **sums** over ranks the gradients that reach this rank's rows (see the
    module docstring for why that, with DDP's averaging, gives single-process gradients).
    A collective: every rank must call it.
    """
    if not _distributed(group):
        return x
    sizes = _gather_sizes(x.shape[0], x.device, group)
    return _AllGatherWithGrad.apply(x, sizes, group)


# --------------------------------------------------------------------------------------------
# InfoNCE


@dataclass
class InfoNCEConfig:
    """Settings of :func:`info_nce`; calling the config computes the loss with them."""

    temperature: float = 0.05
    """Softmax temperature on the cosine similarities (E5-V / MLLM4PUE use 0.05)."""
    symmetric: bool = True
    """Average the query→positive and positive→query losses (else query→positive only)."""
    gather: bool = True
    """Use every process's positives (and negatives) as in-batch negatives when distributed."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"InfoNCE temperature must be > 0, got {self.temperature}")

    def __call__(self, query: Tensor, positive: Tensor, negatives: Tensor | None = None) -> Tensor:
        """:func:`info_nce` with these settings."""
        return info_nce(
            query,
            positive,
            negatives,
            temperature=self.temperature,
            symmetric=self.symmetric,
            gather=self.gather,
        )


def _check_inputs(query: Tensor, positive: Tensor, negatives: Tensor | None) -> Tensor | None:
    """Validate shapes; return negatives flattened to ``(num_negatives, dim)``."""
    if query.ndim != 2:
        raise ValueError(f"info_nce: query must be (batch, dim), got shape {tuple(query.shape)}")
    if positive.shape != query.shape:
        raise ValueError(
            f"info_nce: positive must have the query's shape {tuple(query.shape)} "
            f"(one positive per query), got {tuple(positive.shape)}"
        )
    if query.shape[0] == 0:
        raise ValueError("info_nce: the local batch is empty (query has 0 rows)")
    if negatives is None:
        return None
    dim = query.shape[1]
    if negatives.ndim == 3:
        if negatives.shape[0] != query.shape[0] or negatives.shape[2] != dim:
            raise ValueError(
                f"info_nce: 3-d negatives must be (batch, n_neg, dim) = ({query.shape[0]}, n_neg, "
                f"{dim}), got {tuple(negatives.shape)}"
            )
        return negatives.reshape(-1, dim)
    if negatives.ndim == 2:
        if negatives.shape[1] != dim:
            raise ValueError(
                f"info_nce: negatives must be (num_negatives, {dim}), got {tuple(negatives.shape)}"
            )
        return negatives
    raise ValueError(
        "info_nce: negatives must be (num_negatives, dim) or (batch, n_neg, dim), got shape "
        f"{tuple(negatives.shape)}"
    )


def info_nce(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.05,
    symmetric: bool = True,
    gather: bool = True,
    keys: Tensor | None = None,
) -> Tensor:
    """InfoNCE over cosine similarity with in-batch (and optional hard) negatives.

    Args:
        query: ``(batch, dim)`` query embeddings (normalised to unit length here).
        positive: ``(batch, dim)``; row ``i`` is the positive of query ``i``.
        negatives: optional hard negatives, ``(batch, n_neg, dim)`` or ``(num_negatives, dim)``
            (any number of rows). They are flattened and *every* query scores *every* negative
            of the global batch (appended as extra logit columns after the positives), as in
            E5-V / MLLM4PUE / Tevatron-style training.
        temperature: similarities are divided by it (default 0.05); a positive float or a
            scalar tensor (e.g. a learnable one).
        symmetric: also the positive→query direction (each positive must pick its query among
            all queries); the loss is then the mean of both directions. Hard negatives enter
            only the query→positive direction.
        gather: when a process group with several ranks is initialised, score against the
            positives / queries / negatives of all ranks (gathered with gradient, see
            :func:`gather_with_grad`). Without a process group it changes nothing.
        keys: optional ``(batch,)`` integer ids of what each positive *is* (e.g. the caption's
            class). Other in-batch columns with the same key as row ``i`` are false negatives
            and are left out of row ``i``'s softmax, in both directions (the target column
            stays). Needed when positives repeat, e.g. class-name captions. Gathered across ranks
            like the embeddings.

    Returns:
        A scalar: the mean over the *global* batch of the per-query cross-entropies (per
        direction, averaged over directions). Under a process group with ``gather=True`` the
        value on every rank is exactly the single-process loss on the global batch (the ranks'
        batches concatenated in rank order), and its gradient follows the convention in the
        module docstring (DDP's gradient averaging yields the single-process gradient). With
        ``gather=False`` each rank computes the plain loss on its local batch. Computed in
        float32 (or float64 for float64 inputs).
    """
    flat_negatives = _check_inputs(query, positive, negatives)
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")

    dtype = torch.promote_types(query.dtype, torch.float32)
    q = F.normalize(query.to(dtype), dim=-1)
    p = F.normalize(positive.to(dtype), dim=-1)
    n = F.normalize(flat_negatives.to(dtype), dim=-1) if flat_negatives is not None else None

    distributed = gather and _distributed()
    local = q.shape[0]
    if distributed:
        sizes = _gather_sizes(local, q.device, None)
        offset = sum(sizes[: dist.get_rank()])
        world = dist.get_world_size()
        all_p = _AllGatherWithGrad.apply(p, sizes, None)
        all_q = _AllGatherWithGrad.apply(q, sizes, None) if symmetric else None
        all_n = gather_with_grad(n) if n is not None else None
    else:
        sizes, offset, world = [local], 0, 1
        all_p, all_q, all_n = p, (q if symmetric else None), n
    global_batch = sum(sizes)
    labels = torch.arange(offset, offset + local, device=q.device)
    false_negative = _false_negative_mask(keys, labels, sizes, distributed) if keys is not None else None

    # query -> positive: (local, global_batch [+ global_negatives])
    columns = all_p if all_n is None else torch.cat([all_p, all_n])
    logits = q @ columns.T / temperature
    if false_negative is not None:
        pad = logits.shape[1] - false_negative.shape[1]
        logits = logits.masked_fill(F.pad(false_negative, (0, pad)), float("-inf"))
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    if all_q is not None:
        # positive -> query: (local, global_batch)
        reverse_logits = p @ all_q.T / temperature
        if false_negative is not None:
            reverse_logits = reverse_logits.masked_fill(false_negative, float("-inf"))
        reverse = F.cross_entropy(reverse_logits, labels, reduction="sum")
        loss_sum = (loss_sum + reverse) / 2
    share = loss_sum / global_batch  # this rank's share of the global loss
    if not distributed:
        return share

    # Value: the global loss (all ranks' shares summed); gradient: that of world * share.
    total = share.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    scaled = share * world
    return total + (scaled - scaled.detach())


def _false_negative_mask(keys: Tensor, labels: Tensor, sizes: list[int], distributed: bool) -> Tensor:
    """``(local, global_batch)`` bool: True where a column shares row ``i``'s key but is not its target."""
    keys = torch.as_tensor(keys, device=labels.device).long().flatten()
    if keys.shape[0] != labels.shape[0]:
        raise ValueError(f"info_nce: keys must have one id per row: {keys.shape[0]} keys for {labels.shape[0]} rows")
    all_keys = keys
    if distributed:
        padded = F.pad(keys, (0, max(sizes) - keys.shape[0]))
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        all_keys = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
    mask = keys[:, None] == all_keys[None, :]
    mask[torch.arange(labels.shape[0], device=labels.device), labels] = False
    return mask



# --------------------------------------------------------------------------------------------
# Hierarchical losses (MLLM-HWSI): scale ↔ text granularity contrast, cross-scale consistency

#: visual scales, finest first, and the text granularity each is contrasted with
HIERARCHY_SCALES: tuple[str, ...] = ("cell", "patch", "region", "slide")
SCALE_TO_TEXT: dict[str, str] = {"cell": "word", "patch": "phrase", "region": "sentence", "slide": "paragraph"}


def hierarchical_contrastive_loss(
    visual: dict[str, Tensor],
    text: dict[str, Tensor],
    weights: dict[str, float] | None = None,
    *,
    temperature: float | Tensor = 0.05,
    gather: bool = True,
    keys: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-scale symmetric InfoNCE between visual scales and text granularities, weighted.

    Scale ``cell`` is contrasted with ``word`` text, ``patch`` with ``phrase``, ``region`` with
    ``sentence`` and ``slide`` with ``paragraph`` (:data:`SCALE_TO_TEXT`); each term is
    :func:`info_nce` (symmetric, cosine similarity, gathered across processes when
    ``gather``), so its distributed gradient convention applies.

    Args:
        visual: per scale a ``(B, D)`` pooled visual vector.
        text: per scale a ``(B, D)`` text embedding, keyed by the scale (``"cell"``) or by its
            text granularity (``"word"``).
        weights: per scale weight (default 1.0 for every scale in ``visual``); scales with
            weight 0 or absent from ``weights`` are skipped entirely (not computed).
        temperature: InfoNCE temperature.
        gather: passed to :func:`info_nce`.
        keys: optional per scale (or text granularity) ``(B,)`` integer ids of the texts; rows
            with the same id (e.g. two slides with the same diagnosis phrase) are not each
            other's negatives (:func:`info_nce` ``keys``).

    Returns:
        ``(total, terms)``: the scalar ``sum_s weights[s] * terms[s]`` and the unweighted
        per-scale losses of the computed scales.
    """
    if weights is None:
        weights = {s: 1.0 for s in visual}
    terms: dict[str, Tensor] = {}
    total: Tensor | None = None
    for scale, weight in weights.items():
        if weight == 0:
            continue
        if scale not in visual:
            raise KeyError(f"hierarchical_contrastive_loss: weight given for scale {scale!r} but no visual vector")
        granularity = SCALE_TO_TEXT.get(scale, scale)
        if scale in text:
            txt = text[scale]
        elif granularity in text:
            txt = text[granularity]
        else:
            raise KeyError(
                f"hierarchical_contrastive_loss: no text for scale {scale!r} (looked for {scale!r} and {granularity!r})"
            )
        k = None
        if keys is not None:
            k = keys.get(scale, keys.get(granularity))
        terms[scale] = info_nce(visual[scale], txt, temperature=temperature, symmetric=True, gather=gather, keys=k)
        total = terms[scale] * weight if total is None else total + terms[scale] * weight
    if total is None:
        raise ValueError("hierarchical_contrastive_loss: every scale has weight 0")
    return total, terms


def cross_scale_consistency_loss(
    visual: dict[str, Tensor],
    order: Sequence[str] = HIERARCHY_SCALES,
    weights: dict[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``1 - cos`` between the pooled vectors of adjacent scales, averaged over the batch.

    Args:
        visual: per scale a ``(B, D)`` vector (same ``B`` and ``D`` for every scale in ``order``).
        order: the scales from fine to coarse; pairs are ``(order[i], order[i + 1])``.
        weights: per pair weight keyed ``"fine-coarse"`` (e.g. ``"cell-patch"``), default 1.0;
            pairs with weight 0 are skipped.

    Returns:
        ``(total, terms)``: the scalar weighted sum and the unweighted per-pair means
        ``mean_b (1 - cos(visual[a][b], visual[c][b]))`` keyed ``"a-c"``. Both sides receive
        gradients (no stop-gradient).
    """
    if len(order) < 2:
        raise ValueError(f"cross_scale_consistency_loss: need at least two scales, got {tuple(order)}")
    missing = [s for s in order if s not in visual]
    if missing:
        raise KeyError(f"cross_scale_consistency_loss: no visual vector for scales {missing}")
    terms: dict[str, Tensor] = {}
    total: Tensor | None = None
    for fine, coarse in zip(order[:-1], order[1:]):
        key = f"{fine}-{coarse}"
        weight = 1.0 if weights is None else weights.get(key, 1.0)
        if weight == 0:
            continue
        a, b = visual[fine], visual[coarse]
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"cross_scale_consistency_loss: {key} needs two (B, D) tensors of one shape, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")
        dtype = torch.promote_types(a.dtype, torch.float32)
        terms[key] = (1.0 - F.cosine_similarity(a.to(dtype), b.to(dtype), dim=-1)).mean()
        total = terms[key] * weight if total is None else total + terms[key] * weight
    if total is None:
        raise ValueError("cross_scale_consistency_loss: every pair has weight 0")
    return total, terms


__all__ += [
    "HIERARCHY_SCALES",
    "SCALE_TO_TEXT",
    "cross_scale_consistency_loss",
    "hierarchical_contrastive_loss",
]


# --------------------------------------------------------------------------------------------
# Mask losses for [SEG] grounding (LISA / MedPLIB)
#
# LISA (``model/LISA.py``) trains the mask decoder with a per-mask sigmoid BCE (mean over
# pixels) plus a per-mask soft Dice on the sigmoid, each averaged over all masks of the batch,
# weighted ``bce 2.0 / dice 0.5`` by default. MedPLIB keeps those functions; its grounding-expert
# stage (``scripts/train_stage3.sh``) uses ``dice 5.0 / bce 1.0`` (plus a focal term of weight
# 1.0, not reproduced here) and its MoE stage (``train_stage4.sh``) ``bce 2.0 / dice 0.5``.


def _mask_pairs(
    logits: Tensor | Sequence[Tensor], targets: Tensor | Sequence[Tensor], name: str
) -> list[tuple[Tensor, Tensor]]:
    if isinstance(logits, Tensor) != isinstance(targets, Tensor):
        raise TypeError(f"{name}: give logits and targets both as tensors or both as sequences")
    if isinstance(logits, Tensor):
        logits, targets = [logits], [targets]  # type: ignore[list-item]
    if len(logits) != len(targets):
        raise ValueError(f"{name}: {len(logits)} logit tensors but {len(targets)} target tensors")
    pairs = []
    for lg, tg in zip(logits, targets):
        if lg.shape != tg.shape:
            raise ValueError(
                f"{name}: logits {tuple(lg.shape)} and targets {tuple(tg.shape)} differ"
            )
        if lg.ndim < 2:
            raise ValueError(f"{name}: expected (n, H, W) masks, got shape {tuple(lg.shape)}")
        pairs.append((lg, tg))
    return pairs


def _dice_per_mask(logits: Tensor, targets: Tensor, eps: float, scale: float) -> Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    p = torch.sigmoid(logits.to(dtype)).flatten(1)
    t = targets.to(dtype).flatten(1)
    numerator = 2.0 * (p / scale * t).sum(-1)
    denominator = (p / scale).sum(-1) + (t / scale).sum(-1)
    return 1.0 - (numerator + eps) / (denominator + eps)


def _bce_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x, t = logits.to(dtype), targets.to(dtype)
    return F.binary_cross_entropy_with_logits(x, t, reduction="none").flatten(1).mean(-1)


def _zero_like_graph(logits: Sequence[Tensor]) -> Tensor:
    """A scalar 0 connected to every logit tensor that needs a gradient (or a plain 0)."""
    parts = [lg.sum() * 0.0 for lg in logits if lg.requires_grad]
    if parts:
        return torch.stack(parts).sum()
    device = logits[0].device if len(logits) else None
    return torch.zeros((), device=device)


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1e-6, scale: float = 1000.0) -> Tensor:
    """Soft Dice loss on ``sigmoid(logits)`` per mask, averaged over masks (LISA's exact form).

    For each mask ``i`` with ``p = sigmoid(logits_i)`` and ``t = targets_i``::

        loss_i = 1 - (2 * sum(p / scale * t) + eps) / (sum(p / scale) + sum(t / scale) + eps)

    which equals ``1 - (2 sum(σ·t) + eps·scale) / (sum σ + sum t + eps·scale)``: LISA's defaults
    ``scale=1000, eps=1e-6`` amount to an additive smoothing of ``1e-3`` on the unscaled sums
    (``scale=1, eps=1`` gives the common "+1" smoothing; MedPLIB's own ``dice_loss`` is
    ``scale=1, eps=1e-6``). ``logits``/``targets``: ``(n, ...)``
    with the mask index first; targets in ``{0, 1}`` (soft targets work too). ``n == 0`` returns a
    zero connected to ``logits``.
    """
    ((lg, tg),) = _mask_pairs(logits, targets, "dice_loss")
    if lg.shape[0] == 0:
        return _zero_like_graph([lg])
    return _dice_per_mask(lg, tg, eps, scale).mean()


def sigmoid_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over each mask's pixels, then mean over masks."""
    ((lg, tg),) = _mask_pairs(logits, targets, "sigmoid_bce_loss")
    if lg.shape[0] == 0:
        return _zero_like_graph([lg])
    return _bce_per_mask(lg, tg).mean()


def mask_loss(
    logits: Tensor | Sequence[Tensor],
    targets: Tensor | Sequence[Tensor],
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    *,
    eps: float = 1e-6,
    scale: float = 1000.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``bce_weight * BCE + dice_weight * Dice`` over all masks: ``(total, {"bce", "dice"})``.

    ``logits``/``targets`` are one ``(n, H, W)`` pair or a sequence of pairs (one per image, each
    at its own original size, as LISA computes it); both terms are means over **all** masks of
    all pairs (LISA's ``sum_i loss_i * n_i / sum_i n_i``). The returned terms are unweighted.
    With no mask at all, every value is a zero that keeps ``logits`` in the graph (so
    ``backward()`` and DDP still see the mask decoder), or a plain 0 when nothing needs a
    gradient. Weights: LISA and MedPLIB's MoE stage ``bce 2 / dice 0.5``; MedPLIB's grounding
    expert ``bce 1 / dice 5``.
    """
    pairs = _mask_pairs(logits, targets, "mask_loss")
    pairs_nonempty = [(lg, tg) for lg, tg in pairs if lg.shape[0] > 0]
    if not pairs_nonempty:
        zero = _zero_like_graph([lg for lg, _ in pairs])
        return zero, {"bce": zero, "dice": zero}
    bce = torch.cat([_bce_per_mask(lg, tg) for lg, tg in pairs_nonempty]).mean()
    dice = torch.cat([_dice_per_mask(lg, tg, eps, scale) for lg, tg in pairs_nonempty]).mean()
    # keep empty pairs connected too, so every prediction tensor takes part in backward
    rest = [lg for lg, _ in pairs if lg.shape[0] == 0 and lg.requires_grad]
    total = bce_weight * bce + dice_weight * dice
    if rest:
        total = total + _zero_like_graph(rest)
    return total, {"bce": bce, "dice": dice}


__all__ += ["dice_loss", "mask_loss", "sigmoid_bce_loss"]
