"""Recipe: contrastive training of the universal embedder (MLLM4PUE).

    pathmllm train embed --config configs/embed/lc25000.yaml [--resume] [a.b=value ...]
    accelerate launch --multi_gpu --num_processes 4 -m pathmllm train embed --config ...  # DDP on GPUs
    accelerate launch --config_file fsdp.yaml -m pathmllm train embed --config ...        # FSDP / DeepSpeed
    torchrun --nproc_per_node 2 -m pathmllm train embed --config ... device=cpu           # CPU processes (gloo)

What it does: loads a VLM (a local checkpoint or a tiny preset), optionally adds LoRA adapters
(peft), and trains it so that each query's embedding (last-token hidden state under the
MLLM4PUE prompt) is closest to its positive's among all positives of the global batch:
symmetric InfoNCE over cosine similarity, in-batch negatives gathered across processes with
their gradient, optional hard negatives, false-negative masking by ``key``. With
``optim.chunk_size > 0`` the step is GradCache-chunked, so the contrastive batch can exceed what
fits in memory at once (exactly the same gradient). ``optim.batch_size`` is the *global* batch:
each of the W processes takes ``batch_size / W`` rows of it, and the loss and gradients equal
those of one process on the whole batch.

Outputs in ``out``: ``config.yaml``, ``log.jsonl`` (loss and learning rate per logged step, the
held-out zero-shot evaluation every ``eval_every`` steps), ``checkpoints/last`` (accelerate
state: weights, optimizer, RNG; ``--resume`` continues exactly), ``model/`` (a standard Hugging
Face folder with merged LoRA weights, the processor and ``pathmllm_embedder.json``, loadable by
``pathmllm embed ... --model out/model``) and ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.data.pairs import PairRecord, read_pairs_manifest
from pathmllm.train.common import (
    LoraSettings,
    OptimConfig,
    append_log,
    end_step,
    finish_run,
    load_checkpoint,
    loadavg,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    run_paths,
    set_lr,
    start_run_dir,
)
from pathmllm.utils.config import load_yaml_config

log = logging.getLogger(__name__)

LC25000_NAMES = {"lung_aca": "lung adenocarcinoma", "lung_n": "benign lung tissue",
                 "lung_scc": "lung squamous cell carcinoma"}
EMBEDDER_FILE = "pathmllm_embedder.json"


@dataclass
class EmbedDataConfig:
    """Training pairs: a JSONL manifest, or a tile-classification folder captioned by class."""

    train: str | None = None
    """JSONL manifest of query / positive / optional negative records (see pathmllm.data.pairs)."""
    tiles: str | None = "../shared/data/tiles/lc25000-lung"
    """Used when ``train`` is empty: folder of ``<class>/<tile>`` with ``groups.csv``; tiles are
    split by group, and each image's positive is a caption of its class."""
    class_names: dict[str, str] = field(default_factory=lambda: dict(LC25000_NAMES))
    """Label -> readable class name for captions and zero-shot prompts."""
    val_fraction: float = 0.3
    """Share of each class's groups held out for the zero-shot evaluation."""
    split_seed: int = 0
    """Seed of the group split."""
    use_negatives: bool = True
    """Use the manifest's hard negatives (when every record has one)."""
    image_cache: int = 4096
    """Decoded training images kept in memory (0: decode every time)."""
    augment: bool = True
    """Random flips and 90° rotations of training images (histology has no canonical orientation)."""


@dataclass
class EmbedOptimConfig(OptimConfig):
    """Optimiser, schedule and batch (``batch_size``: pairs per step, over all processes)."""

    chunk_size: int = 0
    """GradCache chunk (inputs per forward); 0: the whole local batch in one forward."""


@dataclass
class TrainEmbedConfig:
    """Everything a ``pathmllm train embed`` run needs; the YAML file mirrors it."""

    out: str = "out/embed-lc25000"
    """Output folder."""
    model: str = "tiny-qwen2-vl"
    """Checkpoint folder, tiny preset or weights-table name to start from."""
    seed: int = 0
    """Seed of initialisation-time randomness and of the data order."""
    device: str = "cpu"
    """cpu | cuda | auto (under accelerate launch, each process takes its own GPU)."""
    bf16: bool = False
    """bfloat16 autocast (accelerate mixed precision)."""
    threads: int | None = None
    """torch CPU threads per process (None: torch's default)."""
    max_minutes: float | None = None
    """Stop training after this many minutes (then evaluate and export)."""
    temperature: float = 0.05
    """InfoNCE temperature."""
    symmetric: bool = True
    """Also the positive -> query direction."""
    mask_false_negatives: bool = True
    """Rows whose positives share a ``key`` are not each other's negatives."""
    embed_token: str | None = None
    """A dedicated embedding token appended to every prompt (e.g. ``<emb>``); None: last prompt token."""
    image_max_pixels: int | None = None
    """Resize images to at most this many pixels before the vision tower (None: the processor's)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: EmbedOptimConfig = field(default_factory=EmbedOptimConfig)
    data: EmbedDataConfig = field(default_factory=EmbedDataConfig)
    log_every: int = 10
    """Log the loss every this many steps."""
    eval_every: int = 100
    """Zero-shot evaluation on the held-out tiles every this many steps (0: only at the end)."""
    checkpoint_every: int = 100
    """Save ``checkpoints/last`` every this many steps."""


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> TrainEmbedConfig:
    """Read a YAML recipe (or the defaults) and apply ``a.b=value`` overrides."""
    cfg = load_yaml_config(TrainEmbedConfig, path, overrides, example="configs/embed/lc25000.yaml")
    if cfg.optim.steps < 1 or cfg.optim.batch_size < 2:
        raise ValueError("optim.steps must be >= 1 and optim.batch_size >= 2 (a contrastive batch needs negatives)")
    return cfg


# --------------------------------------------------------------------------------------------
# data


@dataclass
class EmbedData:
    train: list[PairRecord]
    val_images: list[str]
    val_labels: list[str]


def load_data(cfg: EmbedDataConfig) -> EmbedData:
    """Training records and (for tile folders) the held-out tiles of the zero-shot evaluation."""
    if cfg.train:
        return EmbedData(read_pairs_manifest(cfg.train), [], [])
    if not cfg.tiles:
        raise ValueError("data: give train (a JSONL manifest) or tiles (a folder with groups.csv)")
    from pathmllm.data.tile_classes import caption_records, read_groups, split_by_group

    tiles = read_groups(cfg.tiles)
    train, val = split_by_group(tiles, cfg.val_fraction, cfg.split_seed)
    records = caption_records(train, cfg.class_names, seed=cfg.split_seed)
    return EmbedData(records, [str(t.path) for t in val], [t.label for t in val])


def batch_rows(step: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Rows of the global batch at ``step``: epochs of seeded permutations, the last partial
    batch of an epoch dropped, so the order depends only on ``(seed, step)`` (exact resume)."""
    per_epoch = n // global_batch
    if per_epoch == 0:
        raise ValueError(f"optim.batch_size {global_batch} is larger than the {n} training records")
    epoch, within = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[within * global_batch:(within + 1) * global_batch].tolist()


# --------------------------------------------------------------------------------------------
# model


def build_embedder(cfg: TrainEmbedConfig, device: Any) -> tuple[Any, Any]:
    """``(UniversalEmbedder, peft model or None)`` in float32 on ``device``, ready to train."""
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.embedder import PromptTemplates, UniversalEmbedder

    backbone = load_backbone(cfg.model, dtype="float32", device=str(device))
    if cfg.image_max_pixels:
        set_image_max_pixels(backbone.processor, cfg.image_max_pixels)
    embedder = UniversalEmbedder(backbone, PromptTemplates(embed_token=cfg.embed_token))
    peft_model = None
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(backbone.model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, bias="none"))
    if cfg.gradient_checkpointing:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    backbone.model.train()
    return embedder, peft_model


def set_image_max_pixels(processor: Any, max_pixels: int) -> None:
    """Cap the image size the processor produces (Qwen-VL: ``longest_edge`` pixels; LLaVA: side)."""
    ip = processor.image_processor
    size = dict(ip.size or {})
    if "longest_edge" in size:
        size["longest_edge"] = int(max_pixels)
        size["shortest_edge"] = min(size.get("shortest_edge", max_pixels), int(max_pixels))
        ip.size = size
    if hasattr(ip, "max_pixels"):
        ip.max_pixels = int(max_pixels)


def export_model(embedder: Any, peft_model: Any, folder: Path) -> Path:
    """Save a standard Hugging Face folder (LoRA merged) with the processor and prompt settings."""
    from pathmllm.utils.atomic import write_json

    model = peft_model.merge_and_unload() if peft_model is not None else embedder.backbone.model
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    embedder.backbone.processor.save_pretrained(folder)
    write_json(folder / EMBEDDER_FILE, {"templates": asdict(embedder.templates)})
    return folder


# --------------------------------------------------------------------------------------------
# training


@dataclass
class TrainEmbedResult:
    out: str
    model_dir: str
    steps: int
    train_seconds: float
    metrics: dict[str, Any]


class ImageCache:
    """Decoded training images kept in memory (LRU, ``capacity`` images), so epochs after the
    first do not decode JPEGs again."""

    def __init__(self, capacity: int) -> None:
        from collections import OrderedDict

        self.capacity = capacity
        self.images: OrderedDict[str, Any] = OrderedDict()

    def get(self, path: str | None) -> Any:
        if path is None or self.capacity <= 0:
            return path
        if path in self.images:
            self.images.move_to_end(path)
            return self.images[path]
        from pathmllm.models.embedder import load_image

        image = load_image(path)
        self.images[path] = image
        if len(self.images) > self.capacity:
            self.images.popitem(last=False)
        return image


def _items(sides: list[Any], cache: ImageCache, ops: list[int] | None = None) -> list[tuple[str, Any, Any]]:
    """``(kind, image, text)`` per side; images decoded (cached) and, with ``ops``, flipped /
    rotated: ``ops[i]`` in 0..7 picks one of the 8 symmetries of the square for side ``i``."""
    out = []
    for i, s in enumerate(sides):
        image = cache.get(s.image)
        if ops is not None and image is not None and not isinstance(image, str):
            op = ops[i]
            if op:
                from PIL import Image

                image = image.transpose([Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                                         Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                         Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
                                         Image.Transpose.TRANSVERSE][op - 1])
        out.append((s.kind, image, s.text))
    return out


def train(cfg: TrainEmbedConfig, resume: bool = False, overwrite: bool = False) -> TrainEmbedResult:
    """Run the recipe (see the module docstring). Returns where things went and the metrics."""

    import torch

    out = Path(cfg.out)
    ckpt, log_path = run_paths(out, resume, overwrite)
    acc = make_accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index
    local_batch = cfg.optim.batch_size // world
    data = load_data(cfg.data)
    if acc.is_main_process:
        start_run_dir(out, cfg, resume, overwrite)
    acc.wait_for_everyone()

    embedder, peft_model = build_embedder(cfg, acc.device)
    params, module, optimizer = make_optimizer(acc, embedder.module, cfg.optim)
    embedder.module = module
    eval_embedder = _eval_view(embedder)

    keys_index = {k: i for i, k in enumerate(sorted({r.key for r in data.train if r.key is not None}))}
    use_keys = cfg.mask_false_negatives and keys_index and all(r.key is not None for r in data.train)
    use_neg = cfg.data.use_negatives and all(r.negative is not None for r in data.train)
    cache = ImageCache(cfg.data.image_cache)

    start_step = 0
    if resume:
        start_step = load_checkpoint(acc, ckpt, log_path)
        log.info("resumed from step %d", start_step)

    history: list[dict[str, Any]] = []

    def evaluate(step: int) -> dict[str, Any] | None:
        """Zero-shot evaluation on the held-out tiles (main process), kept in history and the log."""
        if not data.val_images:
            return None
        from pathmllm.bench.zero_shot import zero_shot_eval

        module.eval()
        res = zero_shot_eval(eval_embedder, data.val_images, data.val_labels, cfg.data.class_names)
        module.train()
        log.info("step %d: zero-shot balanced accuracy %.3f", step, res["balanced_accuracy"])
        history.append({"step": step, **res})
        append_log(log_path, {"step": step, "eval": res})
        return res

    if acc.is_main_process and start_step == 0 and cfg.eval_every:
        evaluate(0)
    t0 = time.perf_counter()
    step = start_step
    for step in range(start_step, cfg.optim.steps):
        rows = batch_rows(step, len(data.train), cfg.optim.batch_size, cfg.seed)
        records = [data.train[i] for i in rows[rank * local_batch:(rank + 1) * local_batch]]
        lr = set_lr(optimizer, step, cfg.optim)
        keys = torch.tensor([keys_index[r.key] for r in records], device=acc.device) if use_keys else None

        # augmentation drawn per row of the global batch, so W processes see what one process sees
        ops = (np.random.default_rng([cfg.seed, step]).integers(8, size=(3, cfg.optim.batch_size))
               [:, rank * local_batch:(rank + 1) * local_batch].tolist() if cfg.data.augment else [None] * 3)
        sides = [_items([r.query for r in records], cache, ops[0]), _items([r.positive for r in records], cache, ops[1])]
        if use_neg:
            sides.append(_items([r.negative for r in records], cache, ops[2]))
        loss = contrastive_step(embedder, acc, module, sides, keys, cfg)
        optimizer_step(acc, optimizer, params, cfg.optim.grad_clip)
        done = step + 1
        elapsed = time.perf_counter() - t0
        if acc.is_main_process and (done % cfg.log_every == 0 or done == 1):
            append_log(log_path, {"step": done, "loss": round(loss.item(), 6), "lr": lr, "seconds": round(elapsed, 2)})
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.optim.steps and acc.is_main_process:
            evaluate(done)
        if end_step(acc, ckpt, done, elapsed, cfg):
            break
    done = step + 1 if cfg.optim.steps > start_step else start_step
    train_seconds = time.perf_counter() - t0

    def export() -> dict[str, Any]:
        res = evaluate(done)
        metrics = {"final": res, "history": history, "steps": done, "train_seconds": round(train_seconds, 1),
                   "processes": world, "loadavg": loadavg()}
        export_model(embedder, peft_model, out / "model")
        return metrics

    metrics = finish_run(acc, ckpt, done, out, export)
    return TrainEmbedResult(str(out), str(out / "model"), done, train_seconds, metrics)


def contrastive_step(embedder: Any, acc: Any, module: Any, sides: list[list[tuple[str, Any, Any]]],
                     keys: Any, cfg: TrainEmbedConfig) -> Any:
    """Forward and backward of one step (gradients accumulate into ``.grad``); returns the loss.

    ``sides``: the local batch's query items, positive items and optionally negative items, each
    ``(kind, image, text)``. ``optim.chunk_size > 0``: GradCache chunks (same gradient); else one
    forward for queries, positives and negatives together (one DDP forward per backward).
    """
    from pathmllm.losses import info_nce
    from pathmllm.train.gradcache import GradCache

    def encode(inputs: Any) -> Any:
        with acc.autocast():
            return embedder.encode(inputs)

    def loss_fn(q: Any, p: Any, n: Any) -> Any:
        return info_nce(q, p, n, temperature=cfg.temperature, symmetric=cfg.symmetric, keys=keys)

    if cfg.optim.chunk_size > 0:
        cs = cfg.optim.chunk_size
        chunks = [[embedder.build_mixed_inputs(s[i:i + cs]) for i in range(0, len(s), cs)] for s in sides]
        grad_cache = GradCache(encode, loss_fn=loss_fn, no_sync=lambda: acc.no_sync(module), backward=acc.backward)
        return grad_cache.step(*chunks)
    reps = encode(embedder.build_mixed_inputs([item for s in sides for item in s]))
    parts = reps.split(len(sides[0]))
    loss = loss_fn(parts[0], parts[1], parts[2] if len(sides) > 2 else None)
    acc.backward(loss)
    return loss.detach()


def _eval_view(embedder: Any) -> Any:
    """An embedder sharing the training weights but not the DDP wrapper (rank-0 evaluation)."""
    from pathmllm.models.embedder import UniversalEmbedder

    view = UniversalEmbedder.__new__(UniversalEmbedder)
    view.__dict__.update(embedder.__dict__)
    from pathmllm.models.embedder import EmbeddingModel

    view.module = EmbeddingModel(embedder.backbone.model)
    return view
