"""Map a function over work items in worker processes that each hold per-process state
(an open slide, a loaded model), or inline when one worker is asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(
    fn: Callable[..., R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    extra_args: tuple[Any, ...] = (),
    max_pending: int | None = None,
) -> Iterator[R]:
    """Yield ``fn(item, *extra_args)`` for each item, in order.

    ``workers <= 1`` runs in this process (after calling ``initializer`` once). Otherwise
    ``workers`` spawned processes each run ``initializer(*initargs)`` once; at most
    ``max_pending`` items (default ``4 * workers``) are in flight, so memory stays bounded.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item, *extra_args)
        return
    limit = max_pending or 4 * workers
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=initargs) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item, *extra_args))
            if len(pending) >= limit:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()
