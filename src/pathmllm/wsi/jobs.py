"""Run one per-slide task over many slides: a local process pool or a Ray cluster.

A slide that fails is reported and skipped; the others finish. A worker that crashes
(a C library segfaulting on a corrupt file) is detected, the slides it held are retried
one at a time, and only the culprit is reported.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pathmllm.utils.atomic import write_json
from pathmllm.wsi.errors import SlideError

log = logging.getLogger(__name__)

Engine = Literal["local", "ray"]
Progress = Callable[[str, bool], None]  # (slide path, ok) after each slide


@dataclass
class Failure:
    """One slide that did not finish, and why."""

    slide: str
    path: str
    error: str
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if d["traceback"] is None:
            d.pop("traceback")
        return d


@dataclass
class BatchReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_done": len(self.results),
            "n_failed": len(self.failures),
            "seconds": round(self.seconds, 3),
            "results": self.results,
            "failures": [f.to_dict() for f in self.failures],
        }


def _failure(path: str, exc: BaseException) -> Failure:
    from pathmllm.wsi.reader import slide_name

    known = isinstance(exc, (SlideError, ValueError, FileNotFoundError, ImportError))
    return Failure(
        slide=slide_name(path),
        path=str(path),
        error=type(exc).__name__,
        message=str(exc) if known else f"unexpected error, please report it: {exc}",
        traceback=None if known else "".join(traceback.format_exception(exc)),
    )


def run_one(task: Callable[..., Any], path: str, kwargs: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Run ``task(path, **kwargs)``; never raises for an ordinary exception."""
    try:
        result = task(path, **kwargs)
    except Exception as exc:  # one bad slide must not stop the batch
        return False, _failure(path, exc).to_dict()
    out = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return True, out


def _collect(report: BatchReport, path: str, ok: bool, payload: dict[str, Any], progress: Progress | None) -> None:
    if ok:
        report.results.append(payload)
    else:
        report.failures.append(Failure(**payload))
        log.info("%s failed: %s", path, payload["message"])
    if progress:
        progress(path, ok)


def _duplicates(paths: list[str]) -> dict[str, str]:
    """Paths whose slide name is already taken by an earlier path (their stores would clash)."""
    from pathmllm.wsi.reader import slide_name

    seen: dict[str, str] = {}
    clash: dict[str, str] = {}
    for p in paths:
        n = slide_name(p)
        if n in seen:
            clash[p] = seen[n]
        else:
            seen[n] = p
    return clash


def run_batch(
    paths: list[str | os.PathLike[str]],
    task: Callable[..., Any],
    task_kwargs: dict[str, Any] | None = None,
    engine: Engine = "local",
    workers: int | None = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    ray_options: dict[str, Any] | None = None,
) -> BatchReport:
    """Run ``task(path, **task_kwargs)`` for each path and gather results and failures.

    ``workers=1`` runs in this process (easiest to debug). With ``report_dir`` the run's
    ``summary.json`` and ``errors.json`` are written there. ``ray_options`` go to
    ``ray.remote`` (e.g. ``{"num_gpus": 1}``: one slide per GPU at a time).
    """
    t0 = time.perf_counter()
    kwargs = dict(task_kwargs or {})
    todo = [str(p) for p in paths]
    report = BatchReport()
    clash = _duplicates(todo)
    for p, first in clash.items():
        err = ValueError(f"{p} has the same slide name as {first}; their outputs would overwrite each other: rename one or tile it separately")
        _collect(report, p, False, _failure(p, err).to_dict(), progress)
    todo = [p for p in todo if p not in clash]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if engine == "ray":
        _run_ray(todo, task, kwargs, n_workers if workers else None, ray_address, report, progress, ray_options)
    elif engine == "local":
        if n_workers == 1:
            for p in todo:
                ok, payload = run_one(task, p, kwargs)
                _collect(report, p, ok, payload, progress)
        else:
            _run_pool(todo, task, kwargs, n_workers, report, progress)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    report.seconds = time.perf_counter() - t0
    if report_dir is not None:
        write_report(report, Path(report_dir))
    return report


def write_report(report: BatchReport, folder: Path) -> None:
    write_json(folder / "errors.json", [f.to_dict() for f in report.failures])
    write_json(folder / "summary.json", report.to_dict())


def _run_pool(
    todo: list[str], task: Callable[..., Any], kwargs: dict[str, Any], n_workers: int,
    report: BatchReport, progress: Progress | None,
) -> None:
    ctx = get_context("spawn")  # no fork: C libraries and progress threads do not survive it
    pending = list(todo)
    suspects: list[str] = []
    while pending:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures: dict[Future[Any], str] = {pool.submit(run_one, task, p, kwargs): p for p in pending}
            pending = []
            broken = False
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in done:
                    p = futures[fut]
                    try:
                        ok, payload = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        suspects.append(p)
                        continue
                    _collect(report, p, ok, payload, progress)
            if broken:
                log.warning("a worker crashed; retrying %d slides one at a time", len(suspects))
        for p in suspects:
            _run_isolated(p, task, kwargs, report, progress)
        suspects = []


def _run_isolated(path: str, task: Callable[..., Any], kwargs: dict[str, Any], report: BatchReport, progress: Progress | None) -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            ok, payload = pool.submit(run_one, task, path, kwargs).result()
        except BrokenProcessPool:
            ok, payload = False, Failure(
                slide=Path(path).stem, path=path, error="WorkerCrash",
                message=f"{path}: the reader crashed the worker process (a corrupt or unsupported file); "
                "check the file or try another --backend",
            ).to_dict()
    _collect(report, path, ok, payload, progress)


def _run_ray(
    todo: list[str], task: Callable[..., Any], kwargs: dict[str, Any], num_cpus: int | None,
    address: str | None, report: BatchReport, progress: Progress | None,
    options: dict[str, Any] | None = None,
) -> None:
    from pathmllm.utils.optional import require

    ray = require("ray", "--engine ray")
    started = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            init["address"] = address
        elif num_cpus:
            init["num_cpus"] = num_cpus
        ray.init(**init)
        started = True
    try:
        remote = ray.remote(**{"num_cpus": 1, "max_retries": 0, **(options or {})})(run_one)
        refs = {remote.remote(task, p, kwargs): p for p in todo}
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            ref = done[0]
            p = refs[ref]
            try:
                ok, payload = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died
                ok, payload = False, _failure(p, RuntimeError(f"Ray worker failed: {exc}")).to_dict()
            _collect(report, p, ok, payload, progress)
    finally:
        if started:
            ray.shutdown()
