"""Run benchmark tasks for one model and write its results JSON.

    from pathmllm.bench.runner import BenchConfig, run_benchmark
    run = run_benchmark(BenchConfig(model="tiny-qwen2-vl", suite="pmeb", data_root="/data/pmeb"))
    run.results_path        # <out>/<model>.json; rerunning a task replaces its entry

A task whose dataset is absent or malformed, or that needs text from an image-only model, is
recorded with its error and the run goes on; finished tasks keep their results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathmllm.bench.cache import (
    CachedEmbedder,
    ProgressFactory,
    file_identity,
    model_fingerprint,
    slug,
)
from pathmllm.bench.datasets.base import (
    Data,
    DatasetInfo,
    SplitNotAvailableError,
    dataset_info,
    find_dataset_root,
    split_train_test,
    subsample,
)
from pathmllm.bench.tasks import TaskSpec, resolve_tasks
from pathmllm.utils.atomic import write_text

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PATHMLLM_BENCH_CACHE", "~/.cache/pathmllm/bench")).expanduser()


@dataclass
class BenchConfig:
    """What to run, on which data, and where to write."""

    model: str
    """Universal embedder (tiny preset, checkpoint folder, weights-table name), CLIP pair
    (``quiltnet-b32``, ``open_clip:<arch>``, ``plip`` ...) or image-only patch encoder."""
    tasks: list[str] = field(default_factory=list)
    """Task names (``pathmllm bench ls``) or ``<type>:<dataset>``."""
    suite: str | None = None
    """A suite of tasks (``pmeb``, ``probe``, ``pmeb-extra``)."""
    data_root: str | None = None
    """Folder holding one folder per dataset (names in ``pathmllm bench ls --datasets``)."""
    data_paths: dict[str, str] = field(default_factory=dict)
    """Per-dataset folders overriding ``data_root``."""
    out_dir: str = "bench_results"
    """Where ``<model>.json`` is written."""
    cache_dir: str | None = None
    """Embedding cache (default ``$PATHMLLM_BENCH_CACHE`` or ``~/.cache/pathmllm/bench``); ``""`` disables it."""
    device: str = "auto"
    batch_size: int | None = None
    weights: str | None = None
    """Weights file or folder of a registry encoder."""
    limit: int | None = None
    """At most this many queries per task (stratified), for quick runs."""
    seed: int = 0
    test_fraction: float = 0.3
    """Held-out fraction for probes on datasets without an official train split."""


@dataclass
class BenchRun:
    model: str
    results: dict[str, Any]
    results_path: Path
    errors: dict[str, str]
    """Task name -> error message, for the tasks of this run that failed."""
    tasks_run: list[str] = field(default_factory=list)


def load_bench_model(name: str, device: str = "auto", weights: str | None = None, batch_size: int | None = None) -> Any:
    """A CLIP pair for CLIP-style names, else :func:`pathmllm.models.embedder.load_embedder`."""
    from pathmllm.bench.clip_pair import is_clip_pair, load_clip_pair

    if is_clip_pair(name):
        return load_clip_pair(name, weights=weights, device=device, **({"batch_size": batch_size} if batch_size else {}))
    from pathmllm.models.embedder import load_embedder

    return load_embedder(name, device=device, weights=weights, **({"batch_size": batch_size} if batch_size else {}))


def dataset_root(info: DatasetInfo, cfg: BenchConfig) -> Path:
    if info.name.startswith("manifest:"):
        return Path(info.url)
    return find_dataset_root(info, cfg.data_root, cfg.data_paths.get(info.name))


def load_task_data(spec: TaskSpec, cfg: BenchConfig) -> tuple[Data, Data | None]:
    """The evaluation set (and the train set for probes), subsampled to ``cfg.limit``."""
    info = dataset_info(spec.dataset)
    task_cls = spec.build()
    if info.kind != task_cls.data_kind:
        raise ValueError(f"task {spec.name}: {task_cls.task_type} needs a {task_cls.data_kind} dataset; "
                         f"{spec.dataset} is {info.kind}")
    root = dataset_root(info, cfg)
    if not task_cls.needs_train:
        return subsample(info.load(root), cfg.limit, cfg.seed), None
    test = info.load(root)
    try:
        if "train" not in info.splits:
            raise SplitNotAvailableError(f"{info.name} has no official train split")
        if getattr(test, "split", None) == "train":  # the evaluation set is the train split (WSSS4LUAD)
            raise SplitNotAvailableError(f"{info.name} evaluates on its train split")
        train = info.load(root, split="train")
    except SplitNotAvailableError as exc:
        log.info("%s; %s holds out %.0f%% of the evaluation set (by group where it has groups)", exc, spec.name,
                 100 * cfg.test_fraction)
        train, test = split_train_test(test, cfg.test_fraction, cfg.seed)  # type: ignore[arg-type]
    return subsample(test, cfg.limit, cfg.seed), subsample(train, cfg.limit, cfg.seed)


def run_benchmark(cfg: BenchConfig, progress: ProgressFactory | None = None, embedder: Any = None) -> BenchRun:
    """Run every task of ``cfg`` for one model; write and return the results.

    ``embedder`` skips loading ``cfg.model`` (tests, or a model already in memory).
    """
    specs = resolve_tasks(cfg.tasks, cfg.suite)
    for spec in specs:
        dataset_info(spec.dataset)  # unknown dataset names fail before the model loads
    if embedder is None:
        embedder = load_bench_model(cfg.model, cfg.device, cfg.weights, cfg.batch_size)
    cache = None if cfg.cache_dir == "" else (cfg.cache_dir or default_cache_dir())
    out = Path(cfg.out_dir).expanduser()
    results_path = out / f"{slug(cfg.model)}.json"
    results = _read_results(results_path) or {"model": cfg.model}
    results.update({"model": cfg.model, "dim": int(embedder.dim), "fingerprint": model_fingerprint(embedder)})
    tasks = results.setdefault("tasks", {})
    weights_key = _weights_identity(cfg.model, cfg.weights)
    errors: dict[str, str] = {}
    for spec in specs:
        start = time.perf_counter()
        try:
            data, train = load_task_data(spec, cfg)
            cached = CachedEmbedder(embedder, cache, spec.dataset, batch_size=cfg.batch_size,
                                    progress=progress, key_extra=weights_key)
            res = spec.build().run(data, cached, train)
            entry = res.to_dict() | {"limit": cfg.limit, "cache": dict(cached.stats)}
            entry["seconds"] = round(time.perf_counter() - start, 3)
            log.info("%s: %s", spec.name, {k: round(v, 4) for k, v in res.metrics.items()})
        except (ValueError, OSError, ImportError) as exc:
            errors[spec.name] = f"{type(exc).__name__}: {exc}"
            log.error("%s failed: %s", spec.name, exc)
            entry = {"task": spec.name, "task_type": spec.task_type, "dataset": spec.dataset,
                     "error": errors[spec.name]}
        tasks[spec.name] = entry
        _write_results(results_path, results)  # after every task: finished work is never lost
    return BenchRun(cfg.model, results, results_path, errors, [s.name for s in specs])


def _weights_identity(model: str, weights: str | None) -> dict[str, Any] | None:
    """The registry encoder's weights (explicit or from $PATHMLLM_WEIGHTS) as a cache-key fact:
    new weights under the same model name must not reuse old vectors."""
    from pathmllm.encoders.weights import find_weights

    try:
        path = find_weights(model, weights)
    except (OSError, ValueError):
        return None
    return {"weights": file_identity(path)} if path is not None else None


def _read_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; starting a new results file", path)
        return None
    return data if isinstance(data, dict) else None


def _write_results(path: Path, results: dict[str, Any]) -> None:
    results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_text(path, json.dumps(results, indent=2, default=float))
