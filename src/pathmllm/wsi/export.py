"""Export patch images (a folder of PNG/JPEG files, or one tar/zip per slide) for training elsewhere.

Patches are read by ``workers`` readers at once, each with its own slide handle, in chunks of
neighbouring patches. OpenSlide slides, and any job of at most ``THREADS_UP_TO`` patches, use
threads: OpenSlide's reads and PIL's encoders release the GIL, so threads run in parallel
with no start-up cost. Large jobs on Python-heavy backends use this process and
``workers - 1`` pool processes; this process starts reading at once, so it never waits for
workers to start. The workers come from a ``forkserver`` (``spawn`` where there is none): no fork of a process
that may run threads or hold C-library state, and after the first export in a process new
workers start in milliseconds instead of importing everything again.

Readers differ in what is fastest (``benchmarks/bench_export.py``): OpenSlide reads one
patch per call fastest (a wide region costs more per pixel than the calls it saves), while
tifffile/tiffslide and the other readers gain from fetching a row of touching patches at
the read level with one ``read_region`` call and cutting it up.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import multiprocessing
import os
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pathmllm.utils.atomic import TMP_MARK, atomic_path
from pathmllm.wsi.reader import Slide
from pathmllm.wsi.resolution import ReadPlan
from pathmllm.wsi.store import SlideStore

log = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg"]
Container = Literal["folder", "tar", "zip"]
CHUNK = 32  # most patches per work item
MIN_CHUNK = 4  # fewest patches per work item (each costs a round trip to a worker)
#: backends that read one patch per call faster than a row of patches in one call
PER_PATCH_BACKENDS = frozenset({"openslide"})


@dataclass
class ExportResult:
    slide: str
    output: str
    n_patches: int
    n_written: int
    seconds: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def patch_name(slide: str, x: int, y: int, fmt: ImageFormat) -> str:
    return f"{slide}_x{int(x)}_y{int(y)}.{'jpg' if fmt == 'jpeg' else 'png'}"


def encode(arr: np.ndarray | Image.Image, fmt: ImageFormat, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _runs(coords: np.ndarray, step: int, footprint: int) -> Iterator[np.ndarray]:
    """Index runs of touching patches along a row (same y, x stepping by footprint)."""
    if len(coords) == 0:
        return
    start = 0
    for i in range(1, len(coords) + 1):
        if (
            i == len(coords)
            or coords[i, 1] != coords[i - 1, 1]
            or coords[i, 0] - coords[i - 1, 0] != footprint
            or step != footprint
        ):
            yield np.arange(start, i)
            start = i


def read_patches(slide: Slide, coords: np.ndarray, plan: ReadPlan, step: int) -> Iterator[np.ndarray]:
    """Patches at ``coords`` in order, each equal to ``slide.read_patch(xy, plan=plan)``."""
    for img in _patch_images(slide, coords, plan, step):
        yield np.asarray(img)


def _patch_images(slide: Slide, coords: np.ndarray, plan: ReadPlan, step: int) -> Iterator[Image.Image]:
    """Patches at ``coords`` as PIL images (no array round trips before encoding).

    Each equals ``slide.read_patch(xy, plan=plan)``: the region read at ``plan.level`` and,
    where the plan resizes, the same PIL bicubic resize that :func:`reader.resize` applies.
    Rows of touching patches are read with one call unless the backend is faster per patch.
    """
    p0, lds, rs = plan.patch_size_level0, plan.level_downsample, plan.read_size
    exact = abs(p0 / lds - rs) < 1e-6  # patches tile the read level exactly
    rows = exact and slide.backend not in PER_PATCH_BACKENDS
    size = (plan.patch_size, plan.patch_size)

    def finish(img: Image.Image) -> Image.Image:
        return img.resize(size, Image.Resampling.BICUBIC) if plan.needs_resize else img

    for run in _runs(coords, step, p0) if rows else ([i] for i in range(len(coords))):
        x, y = (int(v) for v in coords[run[0]])
        if len(run) == 1:
            yield finish(Image.fromarray(slide.read_region((x, y), plan.level, (rs, rs))))
            continue
        strip = Image.fromarray(slide.read_region((x, y), plan.level, (rs * len(run), rs)))
        for j in range(len(run)):
            yield finish(strip.crop((j * rs, 0, (j + 1) * rs, rs)))


# worker state: one open slide per process
_WORKER: dict[str, Any] = {}


def _worker_init(path: str, backend: str, mpp: float | None) -> None:
    _WORKER["slide"] = Slide(path, backend=backend, mpp=mpp)


def _ready() -> bool:
    """A no-op whose completion tells that a worker process is up."""
    return "slide" in _WORKER


def _work(coords: np.ndarray, plan: ReadPlan, step: int, fmt: ImageFormat, quality: int, name: str,
          folder: str | None) -> list[tuple[str, bytes | None]]:
    return _work_on(_WORKER["slide"], coords, plan, step, fmt, quality, name, folder)


def _work_on(slide: Slide, coords: np.ndarray, plan: ReadPlan, step: int, fmt: ImageFormat, quality: int,
             name: str, folder: str | None) -> list[tuple[str, bytes | None]]:
    """Read, encode and (for a folder) write one chunk; archives get the bytes back."""
    out: list[tuple[str, bytes | None]] = []
    for (x, y), img in zip(coords, _patch_images(slide, coords, plan, step)):
        fname = patch_name(name, x, y, fmt)
        data = encode(img, fmt, quality)
        if folder is not None:
            _write_atomic(folder, fname, data)
            out.append((fname, None))
        else:
            out.append((fname, data))
    return out


def _write_atomic(folder: str, fname: str, data: bytes) -> None:
    """Write ``folder/fname`` whole or not at all: a temporary file renamed into place.

    Unlike :func:`pathmllm.utils.atomic.write_bytes` there is no fsync per file: it cost
    0.5 to 5 ms per patch on a shared disk, up to half the time of a patch. A killed run
    still never leaves a partial file; after a power loss a file may be empty, which
    :func:`export_patches` writes again (and it syncs once before marking the stage done).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}{TMP_MARK}", dir=folder)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())  # mkstemp makes 0600; give what a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(folder, fname))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _file_mode() -> int:
    """0o666 less the process umask, read once (from /proc where it can be read without
    setting it: setting it briefly to 0 would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            umask = int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def export_patches(
    store: SlideStore,
    slide_path: str | os.PathLike[str],
    fmt: ImageFormat = "png",
    container: Container = "folder",
    workers: int | None = None,
    quality: int = 90,
    backend: str = "auto",
    mpp: float | None = None,
    limit: int | None = None,
) -> ExportResult:
    """Write the store's patches as images into ``<store>/patches/`` or ``patches.{tar,zip}``.

    Resumable: a folder export skips files already written; an archive is written to a
    temporary file and renamed when complete.
    """
    t0 = time.perf_counter()
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"format must be png or jpeg, got {fmt!r}")
    if container not in ("folder", "tar", "zip"):
        raise ValueError(f"container must be folder, tar or zip, got {container!r}")
    stage = f"export_{fmt}_{container}"
    target = store.path("patches" if container == "folder" else f"patches.{container}")
    coords, attrs = store.coords()
    if limit is not None:
        coords = coords[:limit]
    if store.is_done(stage) and store.stage_info(stage).get("n_patches") == len(coords):
        return ExportResult(store.slide_name, str(target), len(coords), 0, time.perf_counter() - t0, "skipped")
    slide = Slide(slide_path, backend=backend, mpp=mpp)
    plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]), _tolerance(store))
    if plan.patch_size_level0 != int(attrs["patch_size_level0"]):
        raise ValueError(
            f"{store.root}: the slide now gives a {plan.patch_size_level0} px footprint, the store "
            f"{attrs['patch_size_level0']} px; re-tile it (pathmllm slide tile --force)"
        )
    step = int(attrs.get("step_level0", plan.patch_size_level0))
    name = store.slide_name
    folder = None
    if container == "folder":
        target.mkdir(parents=True, exist_ok=True)
        folder = str(target)
        _file_mode()  # before any helper thread or worker starts
        # an empty file is one a power loss cut short (files are not fsynced one by one)
        have = {e.name for e in os.scandir(target) if e.is_file() and e.stat().st_size > 0}
        keep = [i for i, (x, y) in enumerate(coords) if patch_name(name, x, y, fmt) not in have]
        todo = coords[keep]
    else:
        todo = coords
    n_workers = max(1, workers or os.cpu_count() or 1)
    chunks = _chunks(todo, n_workers)
    n_workers = min(n_workers, len(chunks) or 1)
    work_args = (plan, step, fmt, quality, name, folder)
    archive_ctx = _archive(target, container) if container != "folder" else None
    try:
        with archive_ctx if archive_ctx is not None else nullcontext() as add:
            if n_workers == 1:
                written = _drain((_work_on(slide, c, *work_args) for c in chunks), add)
            elif _use_threads(slide.backend, len(todo)):
                written = _drain(_run_threads(slide, chunks, work_args, n_workers, (str(slide_path), mpp)), add)
            else:
                init = (str(slide_path), slide.backend, mpp)
                written = _run_pool(slide, chunks, work_args, n_workers, init, add)
    finally:
        slide.close()
    if folder is not None and hasattr(os, "sync"):
        os.sync()  # the patch files reach the disk before the stage is marked done
    seconds = time.perf_counter() - t0
    store.mark_done(stage, seconds, [target.name], n_patches=len(coords), format=fmt, container=container)
    return ExportResult(name, str(target), len(coords), written, seconds, "done")


#: jobs up to this many patches run in threads whatever the backend (no worker start-up cost)
THREADS_UP_TO = 4096
#: backends whose reads and decoding run in C without the GIL: threads scale as processes do
GIL_FREE_BACKENDS = ("openslide",)


def _use_threads(backend: str, n_patches: int) -> bool:
    """Threads (this process, no start-up, no copies) for OpenSlide and for small jobs; worker
    processes for large jobs on Python-heavy backends (tiffslide, DICOM)."""
    return backend in GIL_FREE_BACKENDS or n_patches <= THREADS_UP_TO


def _run_threads(slide: Slide, chunks: list[np.ndarray], work_args: tuple[Any, ...], n_workers: int,
                 reopen: tuple[str, float | None]) -> Iterator[list[tuple[str, bytes | None]]]:
    """Chunks through ``n_workers`` threads, each with its own slide handle; results in order,
    at most ``2 * n_workers`` chunks in flight. OpenSlide reads and PNG/JPEG encoding release the
    GIL, so the threads run in parallel."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    handles: list[Slide] = []
    lock = threading.Lock()

    def run(chunk: np.ndarray) -> list[tuple[str, bytes | None]]:
        handle = getattr(local, "slide", None)
        if handle is None:
            handle = local.slide = Slide(reopen[0], backend=slide.backend, mpp=reopen[1])
            with lock:
                handles.append(handle)
        return _work_on(handle, chunk, *work_args)

    try:
        with ThreadPoolExecutor(n_workers, thread_name_prefix="pathmllm-export") as pool:
            pending: list[Future[list[tuple[str, bytes | None]]]] = []
            for chunk in chunks:
                pending.append(pool.submit(run, chunk))
                if len(pending) >= 2 * n_workers:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()
    finally:
        for handle in handles:
            handle.close()


def _chunks(coords: np.ndarray, n_workers: int) -> list[np.ndarray]:
    """Work items that shrink towards the end ("guided" scheduling): a quarter of each
    reader's share of what is left, between MIN_CHUNK and CHUNK patches, so the readers
    finish at nearly the same moment instead of one reading a last big chunk alone."""
    out, i = [], 0
    while i < len(coords):
        size = max(MIN_CHUNK, min(CHUNK, math.ceil((len(coords) - i) / (4 * n_workers))))
        out.append(coords[i : i + size])
        i += size
    return out


def _tolerance(store: SlideStore) -> float:
    return float(store.manifest().get("params", {}).get("tiling", {}).get("mpp_tolerance", 0.02))


def _mp_context() -> BaseContext:
    """``forkserver`` (cheap, thread-safe worker starts) where available, else ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # the server imports this module once, so its forks start ready (no effect once it runs);
    # "__main__" is the default preload, kept for other users of the forkserver
    ctx.set_forkserver_preload(["__main__", __name__])
    return ctx


def _run_pool(slide: Slide, chunks: list[np.ndarray], work_args: tuple[Any, ...], n_workers: int,
              init: tuple[str, str, float | None], add: Any) -> int:
    """Chunks through this process and ``n_workers - 1`` worker processes; results in order.

    This process reads chunks from the start, so it never waits idle for workers to start
    (a cold forkserver takes a moment; the pool is started from a helper thread). Once a
    worker is up, it keeps up to ``2 * (n_workers - 1) + 1`` chunks queued for the workers and
    takes the next chunk itself; at the end it takes back queued chunks no worker has begun.
    If it finishes everything before any worker is up, the pool is not waited for; if the
    workers cannot start at all (e.g. a ``__main__`` they cannot import, such as ``python -``),
    this process reads everything itself.
    """
    n_pool = n_workers - 1
    pool = ProcessPoolExecutor(n_pool, mp_context=_mp_context(), initializer=_worker_init, initargs=init)
    started: list[Future[bool]] = []

    def start() -> None:
        try:
            started.append(pool.submit(_ready))
        except RuntimeError:  # shut down before it was needed
            pass

    starter = threading.Thread(target=start, name="pathmllm-export-start", daemon=True)
    starter.start()
    # two chunks per worker plus one: a worker finishing a chunk finds the next one waiting
    # even when this process is in the middle of a chunk of its own (refills come between them)
    window = 2 * n_pool + 1
    results: dict[int, list[tuple[str, bytes | None]]] = {}
    pending: dict[Future[list[tuple[str, bytes | None]]], int] = {}
    written, emitted, nxt = 0, 0, 0
    wait = True
    pool_ok = False
    try:
        while emitted < len(chunks):
            if not pool_ok and started and started[0].done():
                error = started[0].exception()
                if error is None:
                    pool_ok = True
                elif window:
                    log.warning("worker processes did not start (%s: %s); reading in this process only",
                                type(error).__name__, error)
                    window = 0
            if pool_ok:
                while len(pending) < window and nxt < len(chunks):
                    pending[pool.submit(_work, chunks[nxt], *work_args)] = nxt
                    nxt += 1
            for fut in [f for f in pending if f.done()]:
                results[pending.pop(fut)] = fut.result()
            if nxt < len(chunks):
                results[nxt] = _work_on(slide, chunks[nxt], *work_args)
                nxt += 1
            elif pending:
                mine = next((f for f in reversed(pending) if f.cancel()), None)  # not begun: do it here
                if mine is not None:
                    i = pending.pop(mine)
                    results[i] = _work_on(slide, chunks[i], *work_args)
                else:
                    futures_wait(list(pending), return_when=FIRST_COMPLETED)
            while emitted in results:  # in chunk order, whoever read them
                written += _drain([results.pop(emitted)], add)
                emitted += 1
        wait = bool(started) and started[0].done()
        return written
    finally:
        pool.shutdown(wait=wait, cancel_futures=True)


def _drain(results: Iterable[list[tuple[str, bytes | None]]], add: Any) -> int:
    n = 0
    for batch in results:
        for fname, data in batch:
            if add is not None and data is not None:
                add(fname, data)
            n += 1
    return n


class _archive:
    """Context manager yielding ``add(name, bytes)`` into a tar or zip written atomically."""

    def __init__(self, target: Path, kind: str) -> None:
        self.target, self.kind = target, kind

    def __enter__(self) -> Any:
        self._ctx = atomic_path(self.target)
        tmp = self._ctx.__enter__()
        if self.kind == "tar":
            self._tar = tarfile.open(tmp, "w")

            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                self._tar.addfile(info, io.BytesIO(data))
        else:
            self._zip = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED)

            def add(name: str, data: bytes) -> None:
                self._zip.writestr(name, data)

        return add

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.kind == "tar":
            self._tar.close()
        else:
            self._zip.close()
        self._ctx.__exit__(exc_type, exc, tb)
