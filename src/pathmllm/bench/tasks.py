"""The task registry: task types, the named PMEB tasks, and suites.

A task is a task type applied to a dataset. Named tasks (``zs-bach``, ``ret-arch-books`` ...)
are registered; any other pairing is written ``<type>:<dataset>``, e.g. ``linear-probe:crc-100k``,
``knn:lc25000-lung`` or ``zero-shot:manifest:/data/mine.csv``.

The ``pmeb`` suite is our reconstruction of the MLLM4PUE benchmark (docs/pmeb.md says what is
certain about it and what is not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pathmllm.bench.composed import ComposedRetrievalTask
from pathmllm.bench.multiple_choice import MultipleChoiceTask
from pathmllm.bench.probe import KNNTask, LinearProbeTask
from pathmllm.bench.retrieval import CrossModalRetrievalTask
from pathmllm.bench.task_base import Task
from pathmllm.bench.zero_shot import ZeroShotClassificationTask
from pathmllm.utils.registry import Registry

TASK_TYPES: dict[str, type[Task]] = {cls.task_type: cls for cls in (
    ZeroShotClassificationTask, CrossModalRetrievalTask, ComposedRetrievalTask, MultipleChoiceTask,
    LinearProbeTask, KNNTask)}

META_TASKS = {"zero-shot": "classification", "linear-probe": "classification", "knn": "classification",
              "retrieval": "retrieval", "composed": "composed retrieval", "multiple-choice": "multiple choice"}


@dataclass(frozen=True)
class TaskSpec:
    """A task type on a dataset, with options."""

    name: str
    task_type: str
    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self) -> Task:
        return TASK_TYPES[self.task_type](name=self.name, **self.options)


TASKS: Registry[TaskSpec] = Registry("bench task")


def register_task(spec: TaskSpec, suites: tuple[str, ...] = ()) -> TaskSpec:
    TASKS.add(spec.name, spec, suites=suites)
    return spec


_PMEB_CLASSIFICATION = ("wsss4luad", "lc25000-lung", "lc25000-colon", "bach", "crc-100k", "osteo", "sicapv2",
                        "pcam", "skincancer")
for _d in _PMEB_CLASSIFICATION:
    register_task(TaskSpec(f"zs-{_d}", "zero-shot", _d, description=f"zero-shot classification on {_d}"),
                  suites=("pmeb",))
register_task(TaskSpec("zs-mhist", "zero-shot", "mhist", description="zero-shot on MHIST (a candidate, not in pmeb)"))
register_task(TaskSpec("zs-skincancer-tumor", "zero-shot", "skincancer-tumor",
                       description="zero-shot on SkinCancer's 4 tumour classes (QuiltNet skin_tumor; not in pmeb)"))
for _d in ("arch-books", "arch-pubmed"):
    register_task(TaskSpec(f"ret-{_d}", "retrieval", _d, description=f"image<->text retrieval on {_d}"),
                  suites=("pmeb",))
for _d in ("quilt-vqa", "pathmmu"):
    register_task(TaskSpec(f"cr-{_d}", "composed", _d, {"target": "text"},
                           description=f"(image + question) -> answer retrieval on {_d}"), suites=("pmeb",))
register_task(TaskSpec("mc-pathmmu", "multiple-choice", "pathmmu", description="PathMMU multiple choice (accuracy)"),
              suites=("pmeb-extra",))
for _d in _PMEB_CLASSIFICATION:
    register_task(TaskSpec(f"lp-{_d}", "linear-probe", _d, description=f"linear probe on {_d}"), suites=("probe",))
    register_task(TaskSpec(f"knn-{_d}", "knn", _d, description=f"kNN (k=20) on {_d}"), suites=("probe",))


def suite_names() -> list[str]:
    return sorted({s for e in TASKS for s in e.metadata.get("suites", ())})


def suite_tasks(suite: str) -> list[TaskSpec]:
    specs = [e.obj for e in TASKS if suite in e.metadata.get("suites", ())]
    if not specs:
        raise KeyError(f"unknown suite {suite!r}; known: {', '.join(suite_names())}, slide-qa (slide models)")
    return sorted(specs, key=lambda s: (list(TASK_TYPES).index(s.task_type), s.name))


def resolve_task(name: str) -> TaskSpec:
    """A registered task name or ``<type>:<dataset>``."""
    if name in TASKS:
        return TASKS.get(name)
    task_type, sep, dataset = name.partition(":")
    if sep and task_type in TASK_TYPES and dataset:
        return TaskSpec(name, task_type, dataset)
    raise KeyError(f"unknown task {name!r}: use a name from `pathmllm bench ls` or <type>:<dataset> with type in "
                   f"{', '.join(TASK_TYPES)}")


def resolve_tasks(names: list[str] | None = None, suite: str | None = None) -> list[TaskSpec]:
    specs = suite_tasks(suite) if suite else []
    for n in names or []:
        spec = resolve_task(n)
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    if not specs:
        raise ValueError("no task given: pass --task NAME (repeatable) or --suite pmeb")
    return specs
