"""Export patch images (a folder of PNG/JPEG files, or one tar/zip per slide) for training elsewhere.

Patches are read by several processes at once, each with its own slide handle, in chunks
of neighbouring patches; a row of touching patches at the read level is fetched with one
``read_region`` call and cut up, which saves the per-call overhead of the readers.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from pathmllm.utils.atomic import atomic_path
from pathmllm.wsi.reader import Slide, resize
from pathmllm.wsi.resolution import ReadPlan
from pathmllm.wsi.store import SlideStore

log = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg"]
Container = Literal["folder", "tar", "zip"]
CHUNK = 64  # patches per work item


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


def encode(arr: np.ndarray, fmt: ImageFormat, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
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
    """Patches at ``coords`` in order, reading each row of touching patches in one call."""
    p0, lds, rs = plan.patch_size_level0, plan.level_downsample, plan.read_size
    exact = abs(p0 / lds - rs) < 1e-6  # patches tile the read level exactly
    for run in _runs(coords, step, p0):
        if len(run) > 1 and exact:
            x, y = coords[run[0]]
            strip = slide.read_region((int(x), int(y)), plan.level, (rs * len(run), rs))
            for j in range(len(run)):
                arr = strip[:, j * rs : (j + 1) * rs]
                yield resize(arr, (plan.patch_size,) * 2) if plan.needs_resize else np.ascontiguousarray(arr)
        else:
            for i in run:
                yield slide.read_patch(tuple(coords[i]), plan.patch_size, plan=plan)


# worker state: one open slide per process
_WORKER: dict[str, Any] = {}


def _worker_init(path: str, backend: str, mpp: float | None) -> None:
    _WORKER["slide"] = Slide(path, backend=backend, mpp=mpp)


def _work(coords: np.ndarray, plan: ReadPlan, step: int, fmt: ImageFormat, quality: int, name: str,
          folder: str | None) -> list[tuple[str, bytes | None]]:
    slide: Slide = _WORKER["slide"]
    out: list[tuple[str, bytes | None]] = []
    for (x, y), arr in zip(coords, read_patches(slide, coords, plan, step)):
        fname = patch_name(name, x, y, fmt)
        data = encode(arr, fmt, quality)
        if folder is not None:
            with atomic_path(Path(folder) / fname) as tmp:
                tmp.write_bytes(data)
            out.append((fname, None))
        else:
            out.append((fname, data))
    return out


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
        have = {p.name for p in target.iterdir()}
        keep = [i for i, (x, y) in enumerate(coords) if patch_name(name, x, y, fmt) not in have]
        todo = coords[keep]
    else:
        todo = coords
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(chunks) or 1))
    written = 0
    archive_ctx = _archive(target, container) if container != "folder" else None
    with archive_ctx if archive_ctx is not None else nullcontext() as add:
        if n_workers == 1:
            _worker_init(str(slide_path), slide.backend, mpp)
            results: Iterator[list[tuple[str, bytes | None]]] = (
                _work(c, plan, step, fmt, quality, name, folder) for c in chunks
            )
            written = _drain(results, add)
        else:
            with ProcessPoolExecutor(
                n_workers, mp_context=get_context("spawn"), initializer=_worker_init,
                initargs=(str(slide_path), slide.backend, mpp),
            ) as pool:
                futures = [pool.submit(_work, c, plan, step, fmt, quality, name, folder) for c in chunks]
                written = _drain((f.result() for f in futures), add)
    slide.close()
    seconds = time.perf_counter() - t0
    store.mark_done(stage, seconds, [target.name], n_patches=len(coords), format=fmt, container=container)
    return ExportResult(name, str(target), len(coords), written, seconds, "done")


def _tolerance(store: SlideStore) -> float:
    return float(store.manifest().get("params", {}).get("tiling", {}).get("mpp_tolerance", 0.02))


def _drain(results: Iterator[list[tuple[str, bytes | None]]], add: Any) -> int:
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
