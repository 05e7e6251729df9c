"""What every PMEB task shares: its result record, the base class, and sanity checks.

A task receives a loaded dataset and an *embedder* (usually a
:class:`~pathmllm.bench.cache.CachedEmbedder`), embeds what it needs through the protocol
(``embed_images`` / ``embed_texts`` / ``embed_pairs``), and returns a :class:`TaskResult`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from pathmllm.bench.cache import EmbeddingDimensionError
from pathmllm.bench.datasets.base import Data, DataKind

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """Metrics of one task on one dataset (JSON-ready with :meth:`to_dict`)."""

    task: str
    task_type: str
    dataset: str
    metrics: dict[str, float]
    n: int
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Task(ABC):
    """One task type (zero-shot, retrieval, ...), configured by keyword options."""

    task_type: ClassVar[str]
    data_kind: ClassVar[DataKind]
    needs_train: ClassVar[bool] = False
    """True for tasks that fit on a train part (linear probe, kNN)."""
    main_metrics: ClassVar[tuple[str, ...]] = ()
    """The metrics reports show first."""

    def __init__(self, name: str | None = None, **options: Any) -> None:
        self.name = name or self.task_type
        self.options = options

    @abstractmethod
    def run(self, data: Data, embedder: Any, train: Data | None = None) -> TaskResult:
        """Evaluate on ``data`` (fitting on ``train`` where the task needs it)."""

    def result(self, data: Data, metrics: dict[str, float], n: int, **kwargs: Any) -> TaskResult:
        """The result record; what the loader skipped (``data.notes``) goes into its details."""
        if data.notes:
            kwargs["details"] = {**kwargs.get("details", {}), "dataset_notes": list(data.notes)}
        return TaskResult(self.name, self.task_type, data.name, metrics, n, **kwargs)


def check_same_space(a: np.ndarray, b: np.ndarray, model: str, what: str = "image and text") -> None:
    """Vectors to compare must have one size: a clear error for a model whose towers differ."""
    if a.shape[-1] != b.shape[-1]:
        raise EmbeddingDimensionError(
            f"{model}: its {what} vectors differ in size ({a.shape[-1]} vs {b.shape[-1]}); they are not one "
            "embedding space. Use a model whose towers project to the same size (e.g. both towers of one CLIP).")


def warn(result_warnings: list[str], message: str) -> None:
    log.warning(message)
    result_warnings.append(message)
