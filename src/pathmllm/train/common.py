"""Pieces every training recipe shares: the learning-rate schedule, run-folder checks, the log."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol


class ScheduleConfig(Protocol):
    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float


class RunExistsError(RuntimeError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """Warm-up then cosine decay to ``lr * min_lr_ratio`` (``step`` counts from 0)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    t = min(max(t, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (other work slows a CPU run down)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def time_is_up(acc: Any, elapsed: float, max_minutes: float | None) -> bool:
    """Whether a run with ``max_minutes`` stops now, decided by the main process and shared with
    every process (each one's own clock could disagree, and one process leaving the loop alone
    would leave the others waiting forever)."""
    if max_minutes is None:
        return False
    import torch

    flag = torch.tensor([1.0 if elapsed > max_minutes * 60 else 0.0], device=acc.device)
    if acc.num_processes > 1:
        import torch.distributed as dist

        dist.broadcast(flag, src=0)
    return bool(flag.item())
