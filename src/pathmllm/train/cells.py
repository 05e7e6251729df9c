"""Recipe: train the ``hovernet-lite`` nucleus segmenter on MoNuSeg-style data.

    pathmllm train cells --config configs/cells/monuseg.yaml [--resume] [a.b=value ...]

or from Python::

    from pathmllm.train.cells import load_config, train
    result = train(load_config("configs/cells/monuseg.yaml", ["optim.steps=200"]))

What it does: loads the ``data.train`` images, resamples them to the network's µm/px,
computes the targets (foreground, HoVer h/v maps, border distance) once, then trains on
random crops with flips / 90° rotations and stain (optical-density) jitter, AdamW with a
warm-up + cosine schedule. It writes into ``out``:

- ``config.yaml``: the resolved configuration;
- ``log.jsonl``: one line per step (losses, learning rate, elapsed seconds) and one per
  evaluation;
- ``checkpoints/last.pt``: weights + optimizer + step + RNG states every
  ``checkpoint_every`` steps (``--resume`` continues from it, reproducing the same run);
- ``model.pt``: the final weights (load with ``build_segmenter("hovernet-lite", weights=...)``);
- ``metrics.json``: Dice / AJI / F1 / PQ per held-out (``data.val``) image and their mean.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.cells.network import PostprocessConfig, UNetConfig
from pathmllm.train.common import RunExistsError, loadavg, lr_at, truncate_log
from pathmllm.utils.config import build_dataclass, load_yaml_config

log = logging.getLogger(__name__)

#: MoNuSeg training images used when the config does not list any (sorted by name)
MONUSEG_TRAIN = [
    "TCGA-21-5784-01Z-00-DX1", "TCGA-AR-A1AK-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1",
    "TCGA-E2-A1B5-01Z-00-DX1", "TCGA-G9-6362-01Z-00-DX1", "TCGA-NH-A8F7-01A-01-TS1",
]
#: held out: the second lung and the second kidney image (their organs stay in training)
MONUSEG_VAL = ["TCGA-21-5786-01Z-00-DX1", "TCGA-B0-5710-01Z-00-DX1"]


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class DataConfig:
    """Where the images are and how they are split."""

    root: str = "../shared/data/nuclei/monuseg-train"
    """Folder of ``<name>.tif`` + ``<name>.xml`` pairs (MoNuSeg layout); relative to the working directory."""
    train: list[str] = field(default_factory=lambda: list(MONUSEG_TRAIN))
    """Image names (file stems) to train on."""
    val: list[str] = field(default_factory=lambda: list(MONUSEG_VAL))
    """Held-out image names, evaluated at the end (never trained on)."""
    default_mpp: float = 0.25
    """µm/px of images whose XML does not say (MoNuSeg: 0.25)."""


@dataclass
class AugmentConfig:
    """Random crops and their augmentations."""

    crop_size: int = 256
    """Crop side in network pixels (a multiple of ``2**model.depth``)."""
    flips: bool = True
    """Random horizontal/vertical flips and 90° rotations (h/v targets are transformed with them)."""
    stain_jitter: float = 0.15
    """Per-channel optical-density scale jitter, ±fraction (HED-style colour augmentation)."""
    stain_shift: float = 0.05
    """Per-channel optical-density additive jitter, ±."""
    brightness: float = 0.1
    """Brightness/contrast jitter, ±fraction."""
    scale: float = 0.25
    """Random zoom: crops are resampled by a factor in [1/(1+scale), 1+scale] (log-uniform),
    so the network sees nuclei of more sizes (0: off)."""


@dataclass
class OptimConfig:
    """Optimiser and schedule."""

    steps: int = 800
    """Optimiser steps."""
    batch_size: int = 8
    """Crops per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.02
    """Final learning rate as a fraction of ``lr``."""
    grad_clip: float = 5.0
    """Clip the gradient norm to this (<= 0: no clipping)."""


@dataclass
class LossConfig:
    """Weights of the loss terms."""

    fg_bce: float = 1.0
    """Foreground binary cross-entropy."""
    fg_dice: float = 1.0
    """Foreground soft Dice loss."""
    hv_mse: float = 1.0
    """Mean squared error of the horizontal/vertical maps (all pixels)."""
    hv_msge: float = 1.0
    """Mean squared error of the h/v maps' gradients inside nuclei (HoVer-Net's MSGE)."""
    dist: float = 1.0
    """Binary cross-entropy of the border-distance map against its soft target."""


@dataclass
class TrainCellsConfig:
    """Everything a ``pathmllm train cells`` run needs; the YAML file mirrors it."""

    out: str = "out/cells-monuseg"
    """Output folder (config, log, checkpoints, final weights, metrics)."""
    seed: int = 0
    """Seed of every random generator (torch, numpy, python)."""
    threads: int = 2
    """torch CPU threads."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto``."""
    bf16: bool = True
    """bfloat16 autocast for the forward pass (about 2x faster on CPUs with AVX-512 BF16; on
    CUDA, where available); losses are computed in float32."""
    max_minutes: float | None = None
    """Stop training early after this many minutes (then evaluate and save as usual); ``null`` = no limit."""
    log_every: int = 25
    """Log the mean loss every this many steps (every step goes to ``log.jsonl``)."""
    checkpoint_every: int = 200
    """Write ``checkpoints/last.pt`` every this many steps (and at the end)."""
    eval_every: int = 0
    """Evaluate on ``data.val`` every this many steps (0: only at the end). Reported, never used to pick a model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Images and split."""
    model: UNetConfig = field(default_factory=UNetConfig)
    """Network shape and working µm/px."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Crops and augmentations."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    """Post-processing stored with the weights and used for evaluation."""

    def __post_init__(self) -> None:
        m = 2**self.model.depth
        if self.augment.crop_size % m:
            raise ValueError(f"augment.crop_size ({self.augment.crop_size}) must be a multiple of {m} (2**model.depth)")
        overlap = set(self.data.train) & set(self.data.val)
        if overlap:
            raise ValueError(f"data.train and data.val share {sorted(overlap)}; held-out images must not be trained on")
        if not self.data.train:
            raise ValueError("data.train is empty")
        if self.optim.steps < 1 or self.optim.batch_size < 1:
            raise ValueError("optim.steps and optim.batch_size must be >= 1")


def config_from_dict(data: dict[str, Any]) -> TrainCellsConfig:
    """Nested dict (as in the YAML) -> :class:`TrainCellsConfig`; unknown keys are errors."""
    return build_dataclass(TrainCellsConfig, data or {}, "")


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> TrainCellsConfig:
    """Read a YAML config (or start from the defaults) and apply ``a.b=value`` overrides."""
    return load_yaml_config(TrainCellsConfig, path, overrides, example="configs/cells/monuseg.yaml")


def config_to_dict(cfg: TrainCellsConfig) -> dict[str, Any]:
    return asdict(cfg)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class _Prepared:
    name: str
    image: np.ndarray
    """(3, H, W) float32 0-255 at the network's µm/px."""
    targets: np.ndarray
    """(4, H, W) float32: fg, h, v, border distance."""


def _prepare(samples: list[Any], net_mpp: float) -> list[_Prepared]:
    import torch

    from pathmllm.cells.network import network_size, resample, target_maps

    out = []
    for s in samples:
        size = network_size(s.labels.shape, s.mpp, net_mpp)
        img = resample(torch.tensor(s.image).permute(2, 0, 1).float(), size).numpy()
        labels = _resize_labels(s.labels, size)
        out.append(_Prepared(s.name, np.ascontiguousarray(img, dtype=np.float32), target_maps(labels)))
    return out


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of instance labels (pixel centres)."""
    h, w = labels.shape
    if (h, w) == tuple(size):
        return labels
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return labels[rows][:, cols]


def augment_pair(
    image: np.ndarray, targets: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips / rot90 of a ``(3, H, W)`` image and its ``(4, H, W)`` targets (h/v signs and
    axes follow the geometry), then colour jitter of the image."""
    if cfg.flips:
        if rng.random() < 0.5:  # left-right: h changes sign
            image, targets = image[:, :, ::-1], targets[:, :, ::-1].copy()
            targets[1] *= -1
        if rng.random() < 0.5:  # up-down: v changes sign
            image, targets = image[:, ::-1, :], targets[:, ::-1, :].copy()
            targets[2] *= -1
        k = int(rng.integers(4))
        for _ in range(k):  # np.rot90 (counter-clockwise): new h = old v, new v = -old h
            image = np.rot90(image, 1, axes=(1, 2))
            targets = np.rot90(targets, 1, axes=(1, 2)).copy()
            targets[[1, 2]] = targets[[2, 1]]
            targets[2] *= -1
    image = np.ascontiguousarray(image, dtype=np.float32)
    if cfg.stain_jitter > 0 or cfg.stain_shift > 0:
        od = -np.log((image + 1.0) / 256.0)
        a = rng.uniform(1 - cfg.stain_jitter, 1 + cfg.stain_jitter, size=(3, 1, 1)).astype(np.float32)
        b = rng.uniform(-cfg.stain_shift, cfg.stain_shift, size=(3, 1, 1)).astype(np.float32)
        image = np.exp(-(od * a + b)) * 256.0 - 1.0
    if cfg.brightness > 0:
        c = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        br = rng.uniform(-cfg.brightness, cfg.brightness) * 255
        mean = image.mean()
        image = (image - mean) * c + mean + br
    image = np.clip(image, 0, 255).astype(np.float32)
    return image, np.ascontiguousarray(targets, dtype=np.float32)


def sample_batch(
    data: list[_Prepared], rng: np.random.Generator, cfg: AugmentConfig, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random crops (images chosen in proportion to their area)."""
    areas = np.array([d.image.shape[1] * d.image.shape[2] for d in data], dtype=float)
    c = cfg.crop_size
    xs, ys = [], []
    for _ in range(batch_size):
        d = data[int(rng.choice(len(data), p=areas / areas.sum()))]
        _, h, w = d.image.shape
        img, tgt = d.image, d.targets
        cs = c
        if cfg.scale > 0:  # source crop side; > c zooms out (nuclei look smaller)
            cs = int(round(c * math.exp(rng.uniform(-1, 1) * math.log1p(cfg.scale))))
        if h < cs or w < cs:  # pad small images (reflect) up to the crop
            ph, pw = max(cs - h, 0), max(cs - w, 0)
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect")
            tgt = np.pad(tgt, ((0, 0), (0, ph), (0, pw)), mode="constant")
            h, w = img.shape[1:]
        y, x = int(rng.integers(h - cs + 1)), int(rng.integers(w - cs + 1))
        img, tgt = img[:, y : y + cs, x : x + cs], tgt[:, y : y + cs, x : x + cs]
        if cs != c:
            img, tgt = _zoom(img, c), _zoom(tgt, c)
        im, tg = augment_pair(img, tgt, rng, cfg)
        xs.append(im)
        ys.append(tg)
    return np.stack(xs), np.stack(ys)


def _zoom(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of ``(C, h, w)`` to ``(C, size, size)``; h/v and border-distance
    targets are per-nucleus normalised, so they stay valid (foreground becomes soft at edges)."""
    import torch

    from pathmllm.cells.network import resample

    return resample(torch.from_numpy(np.ascontiguousarray(arr)), (size, size)).numpy()


# --------------------------------------------------------------------------------------------
# loss


def compute_loss(raw: Any, target: Any, cfg: LossConfig) -> tuple[Any, dict[str, float]]:
    """Weighted loss of raw outputs ``(N, 4, H, W)`` against targets; returns (total, parts)."""
    import torch
    import torch.nn.functional as F

    raw = raw.float()
    fg_t, hv_t, d_t = target[:, :1], target[:, 1:3], target[:, 3:4]
    parts: dict[str, Any] = {}
    parts["fg_bce"] = F.binary_cross_entropy_with_logits(raw[:, :1], fg_t)
    p = torch.sigmoid(raw[:, :1])
    inter = (p * fg_t).sum(dim=(1, 2, 3))
    parts["fg_dice"] = (1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + fg_t.sum(dim=(1, 2, 3)) + 1)).mean()
    hv = raw[:, 1:3]
    parts["hv_mse"] = F.mse_loss(hv, hv_t)
    gp, gt = _sobel_hv(hv), _sobel_hv(hv_t)
    mask = fg_t.expand_as(gp)
    parts["hv_msge"] = ((gp - gt) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
    parts["dist"] = F.binary_cross_entropy_with_logits(raw[:, 3:4], d_t)
    total = sum(getattr(cfg, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


_SOBEL: dict[str, Any] = {}


def _sobel_hv(hv: Any) -> Any:
    """d(h)/dx and d(v)/dy with 5x5 Sobel kernels (as HoVer-Net), ``(N, 2, H, W)``."""
    import torch
    import torch.nn.functional as F

    key = str(hv.device)
    if key not in _SOBEL:
        r = torch.arange(-2, 3, dtype=torch.float32)
        h, v = torch.meshgrid(r, r, indexing="ij")  # h: row offset, v: column offset
        kx = v / (h * h + v * v).clamp_min(1.0)
        ky = h / (h * h + v * v).clamp_min(1.0)
        _SOBEL[key] = (kx.to(hv.device)[None, None], ky.to(hv.device)[None, None])
    kx, ky = _SOBEL[key]
    dx = F.conv2d(hv[:, :1], kx, padding=2)
    dy = F.conv2d(hv[:, 1:2], ky, padding=2)
    return torch.cat([dx, dy], dim=1)


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    metrics: dict[str, Any]
    steps: int
    train_seconds: float


def seed_everything(seed: int) -> np.random.Generator:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    import torch

    return {
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
    }


def _set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    import torch

    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))


def train(cfg: TrainCellsConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run the recipe (see the module docstring). Returns where things went and the metrics."""
    import torch
    import yaml

    from pathmllm.cells.datasets import load_monuseg_folder
    from pathmllm.cells.network import HoverUNet, load_state, read_checkpoint, save_checkpoint
    from pathmllm.utils.atomic import atomic_path

    out = Path(cfg.out)
    ckpt_path = out / "checkpoints" / "last.pt"
    log_path = out / "log.jsonl"
    if not resume and not overwrite and (ckpt_path.exists() or (out / "model.pt").exists()):
        raise RunExistsError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to start again, "
            "or choose another out=..."
        )
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path} to continue from")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for p in (ckpt_path, log_path, out / "model.pt", out / "metrics.json"):
            if p.exists():
                p.unlink()

    torch.set_num_threads(max(int(cfg.threads), 1))
    rng = seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    root = Path(cfg.data.root)
    t0 = time.perf_counter()
    samples = load_monuseg_folder(root, default_mpp=cfg.data.default_mpp, names=list(cfg.data.train))
    found = {s.name for s in samples}
    missing = [n for n in cfg.data.train if n not in found]
    if missing:
        raise FileNotFoundError(f"{root}: data.train names not found: {missing}")
    data = _prepare(samples, cfg.model.mpp)
    log.info("prepared %d training images in %.1f s", len(data), time.perf_counter() - t0)

    model = HoverUNet(cfg.model).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    step = 0
    elapsed = 0.0  # training seconds of earlier sessions of this run
    cpu_elapsed = 0.0  # CPU seconds (all threads) of earlier sessions
    if resume:
        ckpt = read_checkpoint(ckpt_path)
        load_state(model, ckpt["state_dict"], str(ckpt_path))
        if "optimizer" not in ckpt:
            raise ValueError(f"{ckpt_path} has no optimizer state; it is not a training checkpoint")
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        elapsed = float(ckpt.get("train_seconds", 0.0))
        cpu_elapsed = float(ckpt.get("cpu_seconds", 0.0))
        _set_rng_state(rng, ckpt["rng"])
        truncate_log(log_path, step)
        log.info("resumed from %s at step %d", ckpt_path, step)

    autocast = cfg.bf16 and device.type in ("cpu", "cuda")
    last_log: list[dict[str, float]] = []
    session_start = time.perf_counter()
    cpu_start = time.process_time()

    def save_training_checkpoint() -> None:
        save_checkpoint(
            ckpt_path, model, cfg.postprocess, optimizer=opt.state_dict(), step=step, rng=_rng_state(rng),
            train_seconds=elapsed + time.perf_counter() - session_start,
            cpu_seconds=cpu_elapsed + time.process_time() - cpu_start, config=config_to_dict(cfg),
        )

    stopped_early = False
    with open(log_path, "a", encoding="utf-8") as logf:
        while step < cfg.optim.steps:
            if cfg.max_minutes is not None and (elapsed + time.perf_counter() - session_start) > 60 * cfg.max_minutes:
                log.warning("max_minutes=%s reached at step %d of %d; stopping", cfg.max_minutes, step, cfg.optim.steps)
                stopped_early = True
                break
            model.train()
            lr = lr_at(step, cfg.optim)
            for g in opt.param_groups:
                g["lr"] = lr
            x_np, y_np = sample_batch(data, rng, cfg.augment, cfg.optim.batch_size)
            x = _normalise_batch(torch.from_numpy(x_np), device)
            y = torch.from_numpy(y_np).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                raw = model(x)
            loss, parts = compute_loss(raw, y, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            step += 1
            rec = {"step": step, "loss": float(loss.detach()), **parts, "lr": lr,
                   "seconds": round(elapsed + time.perf_counter() - session_start, 3),
                   "cpu_seconds": round(cpu_elapsed + time.process_time() - cpu_start, 3)}
            logf.write(json.dumps(rec) + "\n")
            last_log.append(rec)
            if step % cfg.log_every == 0 or step == cfg.optim.steps:
                logf.flush()
                mean = {k: float(np.mean([r[k] for r in last_log])) for k in ("loss", *parts)}
                log.info("step %d/%d  loss %.4f  (%s)  lr %.2e  %.0f s", step, cfg.optim.steps, mean["loss"],
                         " ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "loss"), lr, rec["seconds"])
                last_log = []
            if step % cfg.checkpoint_every == 0 or step == cfg.optim.steps:
                logf.flush()
                save_training_checkpoint()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.optim.steps and cfg.data.val:
                t_eval, cpu_t_eval = time.perf_counter(), time.process_time()
                ev = evaluate_model(model, cfg)
                logf.write(json.dumps({"step": step, "eval": ev["mean"]}) + "\n")
                logf.flush()
                log.info("step %d eval on %s: %s", step, ", ".join(cfg.data.val),
                         " ".join(f"{k} {v:.3f}" for k, v in ev["mean"].items()))
                session_start += time.perf_counter() - t_eval  # evaluation is not training time
                cpu_start += time.process_time() - cpu_t_eval
        if stopped_early:
            save_training_checkpoint()
    train_seconds = elapsed + time.perf_counter() - session_start
    cpu_seconds = cpu_elapsed + time.process_time() - cpu_start

    model_path = save_checkpoint(
        out / "model.pt", model.to(memory_format=torch.contiguous_format), cfg.postprocess,
        step=step, train_seconds=train_seconds, config=config_to_dict(cfg),
    )
    metrics: dict[str, Any] = {"steps": step, "train_seconds": round(train_seconds, 1),
                               "cpu_seconds": round(cpu_seconds, 1), "threads": cfg.threads,
                               "load_average": loadavg(), "stopped_early": stopped_early,
                               "train_images": list(cfg.data.train), "val_images": list(cfg.data.val)}
    if cfg.data.val:
        t_eval = time.perf_counter()
        metrics.update(evaluate(model_path, cfg, device=str(device)))
        metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 1)
        log.info("held-out mean: %s", " ".join(f"{k} {v:.4f}" for k, v in metrics["mean"].items()))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return TrainResult(out, model_path, metrics, step, train_seconds)


def _normalise_batch(x: Any, device: Any) -> Any:
    import torch

    from pathmllm.cells.network import normalise

    x = normalise(x.to(device))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    weights: str | os.PathLike[str], cfg: TrainCellsConfig, device: str = "cpu", names: list[str] | None = None
) -> dict[str, Any]:
    """Score a checkpoint through the registered backend on ``names`` (default ``data.val``)
    at their native µm/px: ``{"per_image": {...}, "mean": {...}}``."""
    from pathmllm.cells.network import HoverNetLite

    seg = HoverNetLite(weights=weights, device=device)
    return _score_segmenter(seg, cfg, names)


def evaluate_model(model: Any, cfg: TrainCellsConfig, names: list[str] | None = None) -> dict[str, Any]:
    """As :func:`evaluate`, for an in-memory model (used for the periodic evaluations)."""
    from pathmllm.cells.network import HoverNetLite

    seg = HoverNetLite.from_model(model, cfg.postprocess)
    try:
        return _score_segmenter(seg, cfg, names)
    finally:
        model.train()


_VAL_CACHE: dict[tuple[str, tuple[str, ...], float], list[Any]] = {}


def _score_segmenter(seg: Any, cfg: TrainCellsConfig, names: list[str] | None) -> dict[str, Any]:
    from pathmllm.cells.datasets import load_monuseg_folder
    from pathmllm.cells.metrics import score

    names = list(names or cfg.data.val)
    key = (str(Path(cfg.data.root).resolve()), tuple(names), cfg.data.default_mpp)
    if key not in _VAL_CACHE:
        _VAL_CACHE.clear()
        _VAL_CACHE[key] = load_monuseg_folder(cfg.data.root, default_mpp=cfg.data.default_mpp, names=names)
    samples = _VAL_CACHE[key]
    missing = [n for n in names if n not in {s.name for s in samples}]
    if missing:
        raise FileNotFoundError(f"{cfg.data.root}: held-out names not found: {missing}")
    per_image = {}
    for s in samples:
        pred = seg.segment(s.image, s.mpp)
        per_image[s.name] = score(s.labels, pred).to_dict()
    keys = ("dice", "aji", "f1", "pq")
    mean = {k: float(np.mean([v[k] for v in per_image.values()])) for k in keys}
    return {"per_image": per_image, "mean": mean}
