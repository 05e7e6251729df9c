"""Pieces every training recipe shares: the learning-rate schedule, run-folder checks, the log."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
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


@dataclass
class LoraSettings:
    """LoRA adapters (peft) instead of full fine-tuning."""

    enabled: bool = False
    """Train LoRA adapters only (the base weights stay frozen); merged into the exported model."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt (language-model attention by default)."""


@dataclass
class OptimConfig:
    """Optimiser, schedule and global batch (every recipe's ``optim`` section)."""

    steps: int = 300
    """Optimiser steps."""
    batch_size: int = 48
    """Global batch (over all processes)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of ``lr`` (cosine decay)."""
    grad_clip: float = 1.0
    """Clip the gradient norm (<= 0: off)."""


def run_paths(out: Path, resume: bool, overwrite: bool) -> tuple[Path, Path]:
    """``(checkpoint folder, log file)`` of a run in ``out``, after checking that starting,
    resuming or overwriting there makes sense (``RunExistsError`` / ``FileNotFoundError``)."""
    ckpt = out / "checkpoints" / "last"
    if not resume and not overwrite and (ckpt.exists() or (out / "model").exists()):
        raise RunExistsError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start "
                             "again, or choose another out=...")
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} to continue from")
    return ckpt, out / "log.jsonl"


def start_run_dir(out: Path, config: Any, resume: bool, overwrite: bool) -> None:
    """Create ``out`` (main process only), clear a run being overwritten, write ``config.yaml``."""
    import shutil
    from dataclasses import asdict

    import yaml

    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "model", ignore_errors=True)
        for p in (out / "log.jsonl", out / "metrics.json"):
            p.unlink(missing_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))


def save_checkpoint(acc: Any, ckpt: Path, step: int) -> None:
    """accelerate state (weights, optimiser, RNG) + ``step.json``, all processes together."""
    acc.wait_for_everyone()
    acc.save_state(str(ckpt))
    if acc.is_main_process:
        from pathmllm.utils.atomic import write_json

        write_json(ckpt / "step.json", {"step": step})
    acc.wait_for_everyone()
