"""Pieces every training recipe shares: the learning-rate schedule, run-folder checks, the log,
and the accelerate set-up, step and end of a run."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------
# the accelerate run of a recipe (embed, slide, ground): its config has ``seed``, ``device``,
# ``bf16``, ``threads``, ``max_minutes``, ``checkpoint_every`` and an ``optim`` (OptimConfig)


def make_accelerator(cfg: Any) -> Any:
    """Set torch's CPU threads, create the ``Accelerator`` (unused parameters allowed under DDP),
    check that ``optim.batch_size`` divides by its processes and seed every RNG."""
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision="bf16" if cfg.bf16 else "no",
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = acc.num_processes
    if cfg.optim.batch_size % world:
        raise ValueError(f"optim.batch_size {cfg.optim.batch_size} must divide by the {world} processes")
    set_seed(cfg.seed)
    return acc


def make_optimizer(acc: Any, module: Any, cfg: OptimConfig) -> tuple[list[Any], Any, Any]:
    """AdamW over ``module``'s trainable parameters, module and optimiser prepared by ``acc``;
    returns ``(trainable parameters, prepared module, prepared optimiser)``."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prepared, optimizer = acc.prepare(module, optimizer)
    return params, prepared, optimizer


def load_checkpoint(acc: Any, ckpt: Path, log_path: Path) -> int:
    """Restore the state :func:`save_checkpoint` wrote and return its step; the main process drops
    the log lines written after it."""
    acc.load_state(str(ckpt))
    step = json.loads((ckpt / "step.json").read_text())["step"]
    if acc.is_main_process:
        truncate_log(log_path, step)
    return step


def set_lr(optimizer: Any, step: int, cfg: ScheduleConfig) -> float:
    """Set (and return) the learning rate of ``step`` on every parameter group."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(acc: Any, optimizer: Any, params: list[Any], grad_clip: float) -> None:
    """Clip the gradient norm (``grad_clip`` > 0), step and clear the gradients."""
    if grad_clip > 0:
        acc.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loss_record(acc: Any, loss: Any, terms: dict[str, Any], step: int, lr: float,
                elapsed: float) -> dict[str, Any] | None:
    """The log record of ``step``: the loss and its ``terms`` averaged over processes (so the log
    reads the same for any number of processes). Every process calls it (the mean is computed
    together); the main process gets the record, the others None."""
    import torch

    values = torch.stack([loss.detach(), *(v.detach() for v in terms.values())]).float()
    if acc.num_processes > 1:
        values = acc.reduce(values, reduction="mean")
    if not acc.is_main_process:
        return None
    rec: dict[str, Any] = {"step": step, "loss": round(values[0].item(), 5), "lr": lr, "seconds": round(elapsed, 2)}
    rec.update({k: round(v.item(), 5) for k, v in zip(terms, values[1:], strict=True)})
    return rec


def end_step(acc: Any, ckpt: Path, done: int, elapsed: float, cfg: Any) -> bool:
    """After ``done`` steps: checkpoint every ``checkpoint_every`` steps; whether ``max_minutes``
    is reached (every process gets the same answer and leaves the loop together)."""
    if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
        save_checkpoint(acc, ckpt, done)
    stop = time_is_up(acc, elapsed, cfg.max_minutes)
    if stop:
        log.info("max_minutes reached after %d steps", done)
    acc.wait_for_everyone()
    return stop


def finish_run(acc: Any, ckpt: Path, done: int, out: Path, export: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Save the last checkpoint; the main process runs ``export`` (saves the model, evaluates)
    and writes the metrics it returns to ``out/metrics.json``; then every process ends training
    together. Returns the metrics (``{}`` on the other processes)."""
    save_checkpoint(acc, ckpt, done)
    metrics: dict[str, Any] = {}
    if acc.is_main_process:
        from pathmllm.utils.atomic import write_json

        metrics = export()
        write_json(out / "metrics.json", metrics)
    acc.wait_for_everyone()
    acc.end_training()  # tears the process group down on every rank together
    return metrics
