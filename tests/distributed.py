"""Run a test function on several CPU processes joined by a gloo process group.

The worker must be a module-level function (spawned processes import it by name); it is called
as ``worker(rank, world_size, *args)`` after ``init_process_group("gloo")`` and usually saves
its results with ``torch.save`` for the test to compare in the parent process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _entry(rank: int, world_size: int, init_file: str, worker: Callable[..., None], args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        worker(rank, world_size, *args)
        # every rank finishes its collectives before any tears gloo down: a rank that destroyed
        # its group while the other still used the connection aborted it (SIGABRT) in CI
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's C++ threads racing the static destructors at
    # exit aborted a finished worker now and then under load ("terminate called without an
    # active exception", SIGABRT). Results are already on disk; an exception above still
    # propagates to mp.spawn as before.
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_gloo(worker: Callable[..., None], world_size: int, workdir: Path, *args: Any) -> None:
    """Run ``worker(rank, world_size, *args)`` on ``world_size`` spawned CPU processes.

    A worker's exception fails the call (``torch.multiprocessing.ProcessRaisedException``).
    """
    import torch.multiprocessing as mp

    init_file = workdir / "gloo_init"
    if init_file.exists():
        init_file.unlink()
    mp.spawn(_entry, args=(world_size, str(init_file), worker, args), nprocs=world_size, join=True)
