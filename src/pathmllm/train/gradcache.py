"""GradCache: a contrastive step whose batch is larger than what fits in memory at once.

The contrastive loss couples every example of the batch with every other, so plain gradient
accumulation changes the loss. GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup") gets the exact full-batch gradient in three passes:

1. encode every chunk under ``torch.no_grad()`` (only the ``(chunk, dim)`` representations are
   kept), recording the RNG state (CPU and CUDA) before each chunk;
2. make the concatenated representations leaves, compute the loss on them (gathering across
   processes as the loss does) and backpropagate to get ``d loss / d representation``;
3. encode each chunk again *with* grad, under its recorded RNG state so dropout draws the same
   masks, and backpropagate the cached representation gradient through it.

Memory is that of one chunk's activations plus the representations of the whole batch.

Usage with ``accelerate`` (DDP / FSDP)::

    cache = GradCache(
        encode_query=lambda chunk: model(**chunk),
        loss_fn=InfoNCEConfig(temperature=0.05),  # gather=True: global in-batch negatives
        no_sync=lambda: accelerator.no_sync(model),  # all-reduce gradients once per step
        backward=accelerator.backward,  # fp16 loss scaling, gradient-accumulation division
    )
    loss = cache.step(split_into_chunks(queries, 8), split_into_chunks(positives, 8))
    optimizer.step(); optimizer.zero_grad()

No rescaling by the world size or the number of chunks: with ``info_nce(gather=True)`` the
gradients DDP / FSDP average over ranks are the single-process gradients of the global batch
(see :mod:`pathmllm.losses`).

Under DDP every rank must pass the same number of chunks (each forward may broadcast buffers
and the final backward all-reduces). The last re-forward runs outside ``no_sync``, so DDP
all-reduces the gradients accumulated over all chunks once; if that last chunk does not reach
every trainable parameter (e.g. a text-only chunk in a model with a vision tower), construct DDP
with ``find_unused_parameters=True``.

DeepSpeed: ``accelerator.backward`` runs ``engine.step()`` after every call unless
``accelerator.sync_gradients`` is False, so the ``no_sync`` factory must also mark the
re-forwards before the last as inside gradient accumulation (and DeepSpeed's own
``gradient_accumulation_steps`` must be 1, else it divides each chunk's surrogate again).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from pathmllm.losses import info_nce

log = logging.getLogger(__name__)

__all__ = ["GradCache", "RandomState", "split_into_chunks"]

#: ``encode(chunk) -> (chunk_size, dim)``
EncodeFn = Callable[[Any], Tensor]
#: ``loss(query (n, dim), positive (n, dim), negatives (m, dim) | None) -> scalar``
LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def split_into_chunks(batch: Mapping[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Split a batch dict along dim 0 into chunks of at most ``chunk_size`` rows.

    Args:
        batch: values are tensors ``(batch, ...)`` or sequences of length ``batch``; other
            values (None, scalars, strings) are copied into every chunk unchanged.
        chunk_size: rows per chunk (the last chunk may be smaller).

    Returns:
        ``ceil(batch / chunk_size)`` dicts with the same keys.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lengths = {
        key: (value.shape[0] if isinstance(value, Tensor) else len(value))
        for key, value in batch.items()
        if (isinstance(value, Tensor) and value.ndim > 0)
        or (isinstance(value, Sequence) and not isinstance(value, (str, bytes)))
    }
    if not lengths:
        raise ValueError(
            "split_into_chunks: the batch has no tensor or list to split; keys: "
            f"{sorted(batch)}"
        )
    if len(set(lengths.values())) != 1:
        raise ValueError(f"split_into_chunks: batch entries differ in length: {lengths}")
    total = next(iter(lengths.values()))
    return [
        {
            key: value[start : start + chunk_size] if key in lengths else value
            for key, value in batch.items()
        }
        for start in range(0, total, chunk_size)
    ]


def _cuda_devices(chunk: Any) -> list[int]:
    """CUDA devices whose RNG a chunk's forward may use: the current one and the chunk's."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    devices = {torch.cuda.current_device()}

    def visit(value: Any) -> None:
        if isinstance(value, Tensor):
            if value.is_cuda:
                devices.add(value.device.index)
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(chunk)
    return sorted(devices)


class RandomState:
    """The CPU and CUDA RNG states at one moment, to replay random ops (dropout) exactly."""

    def __init__(self, cuda_devices: Sequence[int] = ()) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_devices = list(cuda_devices)
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body from this state; the RNG states from before are restored afterwards."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.cuda_devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _default_backward(surrogate: Tensor) -> None:
    surrogate.backward()


class GradCache:
    """Chunked contrastive step with the exact full-batch gradient (see the module docstring).

    Args:
        encode_query: ``encode_query(chunk) -> (chunk_size, dim)``; called on each query chunk.
        encode_positive: the same for positive chunks (default: ``encode_query``, one shared
            encoder as in MLLM4PUE).
        encode_negative: the same for hard-negative chunks (default: ``encode_positive``).
        loss_fn: ``loss_fn(query (n, dim), positive (n, dim), negatives (m, dim) | None)``
            returning a scalar (default: :func:`pathmllm.losses.info_nce` with its defaults;
            an :class:`pathmllm.losses.InfoNCEConfig` works). Its gradient convention is kept:
            with ``info_nce(gather=True)`` under DDP the averaged gradients equal the
            single-process ones on the global batch.
        no_sync: factory of a context manager that suspends gradient synchronisation, e.g.
            ``lambda: accelerator.no_sync(model)`` or ``model.no_sync`` for a DDP model. Every
            re-forward/backward but the last runs inside it. ``None``: no suspension.
        backward: ``backward(surrogate)`` backpropagates a scalar (default
            ``surrogate.backward()``; pass ``accelerator.backward`` under accelerate). The
            surrogate is ``(representation * cached_gradient).sum()``, whose gradient with
            respect to the parameters is the chunk's share of the full-batch gradient.
    """

    def __init__(
        self,
        encode_query: EncodeFn,
        encode_positive: EncodeFn | None = None,
        encode_negative: EncodeFn | None = None,
        *,
        loss_fn: LossFn | None = None,
        no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
        backward: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.encode_query = encode_query
        self.encode_positive = encode_positive or encode_query
        self.encode_negative = encode_negative or self.encode_positive
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else info_nce
        self.no_sync = no_sync
        self.backward = backward or _default_backward

    def _encode_without_grad(
        self, encode: EncodeFn, chunks: Sequence[Any], what: str
    ) -> tuple[Tensor, list[int], list[RandomState]]:
        """Pass 1: detached representations ``(sum of chunk sizes, dim)`` (at least float32),
        the chunk sizes, and the RNG state before each chunk."""
        reps, states = [], []
        for index, chunk in enumerate(chunks):
            states.append(RandomState(_cuda_devices(chunk)))
            with torch.no_grad():
                rep = encode(chunk)
            if not isinstance(rep, Tensor) or rep.ndim != 2:
                shape = tuple(rep.shape) if isinstance(rep, Tensor) else type(rep).__name__
                raise ValueError(
                    f"GradCache: the {what} encoder must return a (chunk_size, dim) tensor; "
                    f"chunk {index} gave {shape}"
                )
            reps.append(rep.detach())
        sizes = [rep.shape[0] for rep in reps]
        joined = torch.cat(reps)
        return joined.to(torch.promote_types(joined.dtype, torch.float32)), sizes, states

    def step(
        self,
        queries: Sequence[Any],
        positives: Sequence[Any],
        negatives: Sequence[Any] | None = None,
    ) -> Tensor:
        """One contrastive step over all chunks; gradients accumulate into ``.grad``.

        Args:
            queries: query chunks (whatever ``encode_query`` takes, e.g. dicts of tensors from
                :func:`split_into_chunks`).
            positives: positive chunks; their representations, concatenated, must have as
                many rows as the queries' (the chunking itself may differ).
            negatives: optional hard-negative chunks; their representations are concatenated
                to ``(num_negatives, dim)`` and passed to ``loss_fn`` as ``negatives``.

        Returns:
            The loss, detached (what ``loss_fn`` returns on the full batch).
        """
        groups: list[tuple[str, EncodeFn, Sequence[Any]]] = [
            ("query", self.encode_query, queries),
            ("positive", self.encode_positive, positives),
        ]
        if negatives is not None:
            groups.append(("negative", self.encode_negative, negatives))
        for what, _, chunks in groups:
            if len(chunks) == 0:
                raise ValueError(f"GradCache.step: no {what} chunks")

        # 1. representations without grad, remembering each chunk's RNG state
        cached = [self._encode_without_grad(encode, chunks, what) for what, encode, chunks in groups]

        # 2. loss on the representations as leaves -> d loss / d representation
        leaves = [reps.requires_grad_() for reps, _, _ in cached]
        with torch.enable_grad():
            loss = self.loss_fn(leaves[0], leaves[1], leaves[2] if len(leaves) > 2 else None)
            loss.backward()
        log.debug("GradCache: loss %.6f over %d query rows", loss.item(), leaves[0].shape[0])

        # 3. re-encode each chunk with grad under its RNG state, backpropagate its cached grad
        jobs = []
        for (_, encode, chunks), leaf, (_, sizes, states) in zip(groups, leaves, cached):
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            jobs.extend(zip([encode] * len(chunks), chunks, states, grad.split(sizes)))
        for index, (encode, chunk, state, grad) in enumerate(jobs):
            last = index == len(jobs) - 1
            sync = contextlib.nullcontext() if last or self.no_sync is None else self.no_sync()
            with sync, state.replay(), torch.enable_grad():
                rep = encode(chunk)
                if rep.shape != grad.shape:
                    raise RuntimeError(
                        f"GradCache: re-encoding chunk {index} gave shape {tuple(rep.shape)}, "
                        f"the first pass {tuple(grad.shape)}; the encoder must give the same "
                        "shape both times"
                    )
                self.backward((rep.to(grad.dtype) * grad).sum())
        return loss.detach()
