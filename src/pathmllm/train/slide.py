"""Recipe: the three training stages of the hierarchical slide LLM (MLLM-HWSI).

    pathmllm train slide --stage 1 --config configs/slide/virtual.yaml           # CCAF + aggregators
    pathmllm train slide --stage 2 --config ... init=out/slide-s1/model           # projector alignment
    pathmllm train slide --stage 3 --config ... init=out/slide-s2/model           # instruction tuning
    accelerate launch --multi_gpu -m pathmllm train slide --stage 3 --config ...   # DDP on GPUs

Stages (what trains, which losses are on by default; every weight is configurable):

====== ========================================================= ===================================
stage  trainable                                                  losses (default weights)
====== ========================================================= ===================================
1      CCAF, patch/cell input layers, region and slide            hierarchical contrastive 1.0,
       aggregators, scale projectors, text projection; LM frozen  cross-scale consistency 0.5
2      scale projectors, resampler, scale embeddings, text        LM (reports, captions) 1.0,
       projection; the rest frozen                                contrastive 0.1, consistency 0.1
3      LoRA on the LM + everything stage 2 trains                 LM (all conversations) 1.0,
       (``train_encoder: true`` adds the stage-1 modules;         contrastive 0.1, consistency 0.1
       ``lora.enabled: false`` + ``train_lm: true`` trains the
       whole LM instead of adapters)
====== ========================================================= ===================================

Unlike the authors' release, the projectors stay trainable in stage 3, so the hierarchical
losses still carry gradient there (tested in ``tests/train/test_slide_stages.py``).

Data: a slide-QA file in any format :func:`pathmllm.data.slide_qa.read_slide_qa` reads
(WSI-Bench, SlideBench, SlideInstruction, MLLM-HWSI JSONL, pathmllm JSONL) and a folder of
slide stores ``<stores>/<slide>/<setting>/`` holding tiling, cells and patch features (run
``pathmllm slide features`` and ``pathmllm slide cells``, or give ``data.slides`` and the
recipe prepares missing stages itself). A slide's report (``is_report`` record) supplies the
texts of the contrastive loss: paragraph = the report, sentence = its first sentence, phrase =
that sentence without a leading ``Label:`` and cut at the first comma; word = the phrase unless
the record's ``meta.captions`` gives ``word``/``phrase``/``sentence``/``paragraph`` itself.

Outputs in ``out``: ``config.yaml``, ``log.jsonl``, ``checkpoints/last`` (accelerate state;
``--resume`` continues exactly), ``model/`` (:meth:`HierarchicalSlideLM.save_pretrained` +
``pathmllm_slide.json``, the input of the next stage and of ``pathmllm slide ask``) and
``metrics.json`` (held-out evaluation when ``data.val`` is set).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.train.common import (
    LoraSettings,
    OptimConfig,
    append_log,
    end_step,
    finish_run,
    load_checkpoint,
    loadavg,
    loss_record,
    make_accelerator,
    make_optimizer,
    optimizer_step,
    run_paths,
    set_lr,
    start_run_dir,
)
from pathmllm.utils.config import load_yaml_config

log = logging.getLogger(__name__)

__all__ = [
    "SlideLossWeights",
    "SlideTrainingModule",
    "TrainSlideConfig",
    "TrainSlideResult",
    "granularity_texts",
    "load_config",
    "set_stage_trainable",
    "train",
]

STAGE_LOSSES: dict[int, dict[str, float]] = {
    1: {"lm": 0.0, "contrastive": 1.0, "consistency": 0.5},
    2: {"lm": 1.0, "contrastive": 0.1, "consistency": 0.1},
    3: {"lm": 1.0, "contrastive": 0.1, "consistency": 0.1},
}


@dataclass
class SlideDataConfig:
    """Where the questions and the slides are."""

    train: str = ""
    """Slide-QA file of the training slides (any format ``read_slide_qa`` reads)."""
    val: str | None = None
    """Optional held-out slide-QA file, evaluated at the end (closed accuracy, BLEU/ROUGE/METEOR)."""
    format: str = "auto"
    """Format of the QA files (``auto`` detects it)."""
    stores: str = ""
    """Folder of slide stores (``<stores>/<slide>/<setting>``)."""
    slides: str | None = None
    """Folder of slide files: when set, stages a store lacks are run first."""
    mpp: float | None = None
    """µm/px override for slides without it in their metadata (preparation only)."""
    max_eval: int | None = 200
    """Evaluate at most this many held-out questions."""


@dataclass
class SlideLossWeights:
    """Loss weights; None takes the stage's default (see the module docstring)."""

    lm: float | None = None
    contrastive: float | None = None
    consistency: float | None = None
    scales: dict[str, float] = field(default_factory=lambda: {"cell": 0.5, "patch": 1.0, "region": 1.0,
                                                               "slide": 1.0})
    """Per-scale weights of the hierarchical contrastive loss."""
    temperature: float = 0.07
    """InfoNCE temperature of the contrastive loss."""

    def resolved(self, stage: int) -> dict[str, float]:
        base = dict(STAGE_LOSSES[stage])
        for k in base:
            v = getattr(self, k)
            if v is not None:
                base[k] = float(v)
        return base


@dataclass
class SlideLoraConfig(LoraSettings):
    """LoRA adapters on the LM (stage 3)."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16


@dataclass
class SlideOptimConfig(OptimConfig):
    """``batch_size``: slides per step (distinct slides; one question each in stages 2 and 3)."""

    steps: int = 200
    batch_size: int = 8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1


@dataclass
class TrainSlideConfig:
    """Everything a ``pathmllm train slide`` run needs; the YAML file mirrors it."""

    out: str = "out/slide"
    stage: int = 1
    """1, 2 or 3 (``--stage`` on the command line)."""
    init: str | None = None
    """Model folder of the previous stage (``out/model`` of its run); None starts from ``llm``."""
    llm: str | None = None
    """Causal LM (local folder or ``tiny-qwen2-lm``) for a new model; not with ``init``."""
    hierarchy: dict[str, Any] = field(default_factory=dict)
    """:class:`~pathmllm.models.hierarchy.HierarchyConfig` fields (patch_feature_dim and
    llm_hidden_size are read from the data and the LM). With ``init`` they must match it."""
    pipeline: dict[str, Any] = field(default_factory=dict)
    """:class:`~pathmllm.models.hierarchy.pipeline.SlidePipelineSpec` fields (encoder, tiling,
    limits, prompt). With ``init`` they must match it."""
    train_encoder: bool = False
    """Stage 3: also train the stage-1 modules (CCAF, aggregators)."""
    train_lm: bool = False
    """Stage 3 with ``lora.enabled: false``: train every LM weight (full fine-tuning; sensible for
    tiny presets that start from random weights, costly for a 7B LM)."""
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    threads: int | None = None
    max_minutes: float | None = None
    """Stop after this many minutes (then evaluate and export)."""
    max_new_tokens: int = 48
    """Answer length at evaluation."""
    losses: SlideLossWeights = field(default_factory=SlideLossWeights)
    lora: SlideLoraConfig = field(default_factory=SlideLoraConfig)
    optim: SlideOptimConfig = field(default_factory=SlideOptimConfig)
    data: SlideDataConfig = field(default_factory=SlideDataConfig)
    log_every: int = 10
    checkpoint_every: int = 100


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                stage: int | None = None) -> TrainSlideConfig:
    """Read a YAML recipe and apply ``a.b=value`` overrides (``stage`` wins over the file)."""
    cfg = load_yaml_config(TrainSlideConfig, path, overrides, example="configs/slide/virtual.yaml")
    if stage is not None:
        cfg.stage = stage
    if cfg.stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {cfg.stage}")
    if cfg.init is None and cfg.stage > 1:
        raise ValueError(f"stage {cfg.stage} starts from the previous stage's model: set init=OUT/model "
                         f"(the model folder of a stage-{cfg.stage - 1} run)")
    if cfg.init is not None and cfg.llm is not None:
        raise ValueError("set either init (a slide model to continue) or llm (a language model for a new slide "
                         "model), not both: the init model already holds its LM")
    if cfg.init is None and cfg.llm is None:
        cfg.llm = "tiny-qwen2-lm"
    if cfg.stage == 3 and cfg.lora.enabled and cfg.train_lm:
        raise ValueError("train_lm (full fine-tuning of the LM) and lora.enabled exclude each other: set "
                         "lora.enabled=false to train every LM weight, or train_lm=false to train LoRA adapters")
    if not cfg.data.train or not cfg.data.stores:
        raise ValueError("data.train (a slide-QA file) and data.stores (the slide stores folder) are required")
    if cfg.optim.steps < 1 or cfg.optim.batch_size < 2:
        raise ValueError("optim.steps must be >= 1 and optim.batch_size >= 2 (the contrastive loss needs negatives)")
    return cfg


# --------------------------------------------------------------------------------------------
# texts


def granularity_texts(report: str, captions: dict[str, str] | None = None) -> dict[str, str]:
    """Word / phrase / sentence / paragraph texts of a slide from its report (see the module docstring)."""
    captions = dict(captions or {})
    text = " ".join(report.split())
    sentences = re.split(r"(?<=[.!?])\s+", text)
    sentence = sentences[0] if sentences and sentences[0] else text
    phrase = re.sub(r"^[A-Za-z][\w /-]{0,40}:\s*", "", sentence).split(",")[0].strip().rstrip(".") or sentence
    out = {"paragraph": text, "sentence": sentence, "phrase": phrase, "word": phrase}
    out.update({k: str(v) for k, v in captions.items() if k in out and v})
    return out


# --------------------------------------------------------------------------------------------
# model pieces


def set_stage_trainable(model: Any, stage: int, train_encoder: bool = False, train_lm: bool = False) -> list[str]:
    """Set ``requires_grad`` for ``stage`` (module docstring table); returns the trainable names."""
    enc = model.encoder
    for p in model.parameters():
        p.requires_grad_(False)
    late = [enc.projectors, enc.resampler, enc.text_projection]
    early = [enc.ccaf, enc.patch_in, enc.cell_to_patch, enc.region_aggregator, enc.slide_aggregator]
    if stage == 1:
        modules = early + [enc.projectors, enc.text_projection]
    else:
        modules = late + (early if stage == 3 and train_encoder else [])
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    if stage >= 2:
        for p in enc.scale_embed.parameters():
            p.requires_grad_(True)
    if stage == 3 and model.lora_applied:
        for n, p in model.llm.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
    elif stage == 3 and train_lm:
        for p in model.llm.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


class SlideTrainingModule:
    """Computes one step's losses; wrapped as an ``nn.Module`` so DDP syncs every gradient."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # build the nn.Module subclass lazily (torch import)
        return _module_class()(*args, **kwargs)


def _module_class() -> Any:
    import torch
    from torch import nn

    from pathmllm.losses import cross_scale_consistency_loss, hierarchical_contrastive_loss

    class _SlideTrainingModule(nn.Module):
        def __init__(self, model: Any, weights: dict[str, float], scale_weights: dict[str, float],
                     temperature: float) -> None:
            super().__init__()
            self.model = model
            self.weights = weights
            self.scale_weights = {k: float(v) for k, v in scale_weights.items() if v}
            self.temperature = temperature

        def forward(self, batch: Any, texts: dict[str, list[str]] | None, lm: dict[str, Any] | None
                    ) -> tuple[Any, dict[str, Any]]:
            """``texts``: per granularity one text per slide (contrastive); ``lm``: ``input_ids``,
            ``attention_mask``, ``labels`` (LM loss). Returns ``(total, terms)``."""
            m = self.model
            terms: dict[str, Any] = {}
            total = None
            if lm is not None and self.weights["lm"]:
                out = m(batch, lm["input_ids"], lm["attention_mask"], lm["labels"])
                hierarchy = out.hierarchy
                terms["lm"] = out.loss
                total = out.loss * self.weights["lm"]
            else:
                hierarchy = m.encoder(batch)
            if texts is not None and self.weights["contrastive"]:
                vecs, keys = {}, {}
                for gran, items in texts.items():
                    vecs[gran] = m.embed_texts(items)
                    # the same id for the same text on every process (ids are compared after gathering)
                    keys[gran] = torch.tensor([zlib.crc32(t.encode("utf-8")) for t in items],
                                              dtype=torch.long, device=vecs[gran].device)
                c, parts = hierarchical_contrastive_loss(hierarchy.pooled, vecs, self.scale_weights,
                                                         temperature=self.temperature, keys=keys)
                terms["contrastive"] = c
                terms.update({f"contrastive_{k}": v for k, v in parts.items()})
                total = c * self.weights["contrastive"] if total is None else total + c * self.weights["contrastive"]
            if self.weights["consistency"]:
                c, parts = cross_scale_consistency_loss(hierarchy.pooled)
                terms["consistency"] = c
                total = c * self.weights["consistency"] if total is None else total + c * self.weights["consistency"]
            if total is None:
                raise ValueError("every loss of this stage has weight 0")
            return total, terms

    return _SlideTrainingModule


# --------------------------------------------------------------------------------------------
# data


@dataclass
class SlideExample:
    slide: str
    prompt_question: str
    answer: str


@dataclass
class SlideData:
    slides: list[str]
    """Slide names with a store, in order."""
    stores: dict[str, Path]
    texts: dict[str, dict[str, str]]
    """Per slide its granularity texts (slides with a report)."""
    examples: dict[str, list[SlideExample]]
    """Per slide its questions (stage 2: reports and captions only)."""
    skipped: list[str] = field(default_factory=list)


def _slide_names(records: list[Any], data_cfg: SlideDataConfig, spec: Any) -> tuple[dict[str, str], list[str]]:
    """record slide_id -> store slide name (preparing missing stages when slides are given)."""
    from pathmllm.data.slide_qa import index_slides, resolve_slide
    from pathmllm.models.hierarchy.pipeline import prepare_slide, store_dir

    names: dict[str, str] = {}
    problems: list[str] = []
    slide_files = index_slides(data_cfg.slides) if data_cfg.slides else {}
    for r in records:
        if r.slide_id in names:
            continue
        path = resolve_slide(r, slide_files) if slide_files else None
        name = path.stem if path is not None else Path(r.slide_id).stem
        if path is not None:
            try:
                prepare_slide(path, data_cfg.stores, spec, mpp=data_cfg.mpp, device="cpu")
            except Exception as exc:  # one bad slide is reported and skipped, the rest train
                problems.append(f"{path}: {exc}")
                continue
        if not store_dir(data_cfg.stores, name, spec).is_dir():
            problems.append(f"{r.slide_id}: no slide store at {store_dir(data_cfg.stores, name, spec)}; run "
                            "`pathmllm slide features` and `pathmllm slide cells` on it, or set data.slides")
            continue
        names[r.slide_id] = name
    return names, problems


def load_data(cfg: TrainSlideConfig, spec: Any, path: str) -> SlideData:
    from pathmllm.data.slide_qa import read_slide_qa
    from pathmllm.models.hierarchy.pipeline import store_dir

    records, problems = read_slide_qa(path, cfg.data.format)
    for p in problems:
        log.warning("%s", p)
    if not records:
        raise ValueError(f"{path}: no usable slide-QA records")
    names, skipped = _slide_names(records, cfg.data, spec)
    for s in skipped:
        log.warning("skipped slide %s", s)
    texts: dict[str, dict[str, str]] = {}
    examples: dict[str, list[SlideExample]] = {}
    for r in records:
        name = names.get(r.slide_id)
        if name is None:
            continue
        if r.is_report and name not in texts:
            texts[name] = granularity_texts(r.answer, r.meta.get("captions") if r.meta else None)
        if cfg.stage == 2 and not r.is_report:
            continue
        examples.setdefault(name, []).append(SlideExample(name, r.prompt(), r.answer))
    slides = sorted(set(names.values()))
    return SlideData(slides, {s: store_dir(cfg.data.stores, s, spec) for s in slides}, texts, examples, skipped)


def cell_statistics(stores: list[Path], columns: list[str]) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of the cell columns over ``stores``' ``cells.parquet``."""
    import pyarrow.parquet as pq

    total = np.zeros(len(columns))
    total_sq = np.zeros(len(columns))
    n = 0
    for store in stores:
        f = store / "cells.parquet"
        if not f.exists():
            continue
        t = pq.read_table(f, columns=columns)
        x = np.stack([t.column(c).to_numpy().astype(np.float64) for c in columns], 1) if t.num_rows else None
        if x is None:
            continue
        total += x.sum(0)
        total_sq += (x**2).sum(0)
        n += len(x)
    if n == 0:
        return [0.0] * len(columns), [1.0] * len(columns)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) if v > 0 else 1.0 for v in std]


def batch_slides(step: int, slides: list[str], batch: int, seed: int) -> list[str]:
    """The global batch of ``step``: distinct slides, deterministic in ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    k = min(batch, len(slides))
    return [slides[i] for i in rng.choice(len(slides), size=k, replace=False)]


# --------------------------------------------------------------------------------------------
# model construction


def _check_matches(kind: str, given: dict[str, Any], saved: dict[str, Any], init: str) -> None:
    diffs = []
    for k, v in given.items():
        if k not in saved:
            raise ValueError(f"{kind}.{k} is not a {kind} field; known: {sorted(saved)}")
        sv = saved[k]
        if isinstance(sv, (list, tuple)) and isinstance(v, (list, tuple)):
            same = list(sv) == list(v)
        else:
            same = sv == v
        if not same:
            diffs.append(f"{kind}.{k}: config {v!r}, checkpoint {sv!r}")
    if diffs:
        raise ValueError(f"the config does not match the checkpoint it starts from ({init}): " + "; ".join(diffs)
                         + ". A later stage must keep the earlier stage's sizes and preprocessing: remove these "
                           "keys from the config (they are read from the checkpoint), or point init at a "
                           "checkpoint of this size.")


def resolve_spec(cfg: TrainSlideConfig) -> Any:
    """The run's :class:`SlidePipelineSpec`: the ``init`` model's (checked against the config), else
    the config's ``pipeline`` section."""
    from pathmllm.models.hierarchy.pipeline import SlidePipelineSpec, load_spec

    if cfg.init is not None:
        spec = load_spec(cfg.init)
        _check_matches("pipeline", cfg.pipeline, asdict(spec), cfg.init)
        return spec
    try:
        return SlidePipelineSpec(**cfg.pipeline)
    except TypeError as exc:
        raise ValueError(f"pipeline: {exc}; known keys: {sorted(SlidePipelineSpec.__dataclass_fields__)}") from None


def build_model(cfg: TrainSlideConfig, spec: Any, patch_dim: int) -> Any:
    """A new slide model (``llm`` + a random encoder) or the ``init`` model, checked against the config."""
    from pathmllm.models.hierarchy.config import HierarchyConfig
    from pathmllm.models.hierarchy.slide_lm import (
        HIERARCHY_CONFIG,
        HierarchicalSlideLM,
        load_causal_lm,
    )

    if cfg.init is not None:
        init = Path(cfg.init)
        saved = json.loads((init / HIERARCHY_CONFIG).read_text()) if (init / HIERARCHY_CONFIG).is_file() else {}
        saved.pop("slide_token", None)
        _check_matches("hierarchy", cfg.hierarchy, saved, cfg.init)
        if saved.get("patch_feature_dim") not in (None, patch_dim):
            raise ValueError(f"{cfg.init} reads {saved['patch_feature_dim']}-dim patch features but the stores "
                             f"hold {patch_dim}-dim features of encoder {spec.encoder!r}; re-extract features "
                             "with the encoder the model was trained on")
        return HierarchicalSlideLM.from_pretrained(init, device="cpu", dtype="float32")
    llm, tokenizer = load_causal_lm(cfg.llm, device="cpu", dtype="float32")
    hidden = int(llm.config.hidden_size)
    h = dict(cfg.hierarchy)
    for k, v in (("patch_feature_dim", patch_dim), ("llm_hidden_size", hidden),
                 ("cell_feature_dim", len(spec.cell_columns))):
        if k in h and h[k] != v:
            raise ValueError(f"hierarchy.{k}={h[k]} but the data / LM give {v}; remove it from the config")
        h[k] = v
    if "resampler_scales" in h:
        h["resampler_scales"] = tuple(h["resampler_scales"])
    try:
        config = HierarchyConfig(**h)
    except TypeError as exc:
        raise ValueError(f"hierarchy: {exc}") from None
    return HierarchicalSlideLM(config, llm, tokenizer)


def _patch_dim(store: Path, encoder: str) -> int:
    import h5py

    from pathmllm.encoders.extract import safe_name

    f = store / f"features_{safe_name(encoder)}.h5"
    if not f.is_file():
        raise FileNotFoundError(f"{store}: no {f.name}; run `pathmllm slide features SLIDE -e {encoder} --out OUT`")
    with h5py.File(f, "r") as h:
        return int(h["features"].shape[1])


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainSlideResult:
    out: str
    model_dir: str
    steps: int
    train_seconds: float
    metrics: dict[str, Any]


class _HierarchyCache:
    """Slide hierarchies read once (they do not change during training)."""

    def __init__(self, data: SlideData, spec: Any) -> None:
        self.data, self.spec, self.items = data, spec, {}

    def __call__(self, slide: str) -> Any:
        if slide not in self.items:
            from pathmllm.models.hierarchy.pipeline import read_hierarchy

            self.items[slide] = read_hierarchy(self.data.stores[slide], self.spec)
        return self.items[slide]


def train(cfg: TrainSlideConfig, resume: bool = False, overwrite: bool = False) -> TrainSlideResult:
    """Run one stage (see the module docstring)."""
    from pathmllm.models.hierarchy.pipeline import format_prompt
    from pathmllm.models.hierarchy.store_batch import collate_hierarchy

    out = Path(cfg.out)
    ckpt, log_path = run_paths(out, resume, overwrite)
    acc = make_accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index

    spec = resolve_spec(cfg)
    data = load_data(cfg, spec, cfg.data.train)
    weights = cfg.losses.resolved(cfg.stage)
    if not data.slides:
        raise ValueError(f"{cfg.data.train}: none of its slides has a store under {cfg.data.stores}")
    if weights["contrastive"]:
        no_text = [s for s in data.slides if s not in data.texts]
        if len(no_text) == len(data.slides):
            raise ValueError(f"{cfg.data.train}: no slide has a report, so the contrastive loss has no text; add "
                             "report records or set losses.contrastive=0")
    train_slides = [s for s in data.slides if (weights["lm"] == 0 or data.examples.get(s))
                    and (not weights["contrastive"] or s in data.texts)]
    if len(train_slides) < 2:
        raise ValueError(f"stage {cfg.stage} needs at least 2 slides with "
                         f"{'reports' if weights['contrastive'] else 'questions'}; found {len(train_slides)}")
    if cfg.init is None and spec.cell_mean is None:
        spec.cell_mean, spec.cell_std = cell_statistics([data.stores[s] for s in train_slides], spec.cell_columns)
    model = build_model(cfg, spec, _patch_dim(data.stores[train_slides[0]], spec.encoder))
    if cfg.stage == 3 and cfg.lora.enabled:
        model.apply_lora(r=cfg.lora.r, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules,
                         dropout=cfg.lora.dropout)
    trainable = set_stage_trainable(model, cfg.stage, cfg.train_encoder, cfg.train_lm)
    model.to(acc.device)
    cache = _HierarchyCache(data, spec)

    if acc.is_main_process:
        start_run_dir(out, cfg, resume, overwrite)
    acc.wait_for_everyone()

    module = SlideTrainingModule(model, weights, cfg.losses.scales, cfg.losses.temperature)
    params, wrapped, optimizer = make_optimizer(acc, module, cfg.optim)
    start_step = 0
    if resume:
        start_step = load_checkpoint(acc, ckpt, log_path)
        log.info("resumed stage %d from step %d", cfg.stage, start_step)
    log.info("stage %d: %d slides, %d trainable tensors, losses %s", cfg.stage, len(train_slides), len(trainable),
             weights)

    t0 = time.perf_counter()
    step = start_step
    for step in range(start_step, cfg.optim.steps):
        slides = batch_slides(step, train_slides, cfg.optim.batch_size, cfg.seed)
        n_local = len(slides) // world
        mine = slides[rank * n_local:(rank + 1) * n_local] if world > 1 else slides
        batch = collate_hierarchy([cache(s) for s in mine]).to(acc.device)
        texts = None
        if weights["contrastive"]:
            texts = {g: [data.texts[s][g] for s in mine] for g in ("word", "phrase", "sentence", "paragraph")}
        lm = None
        if weights["lm"]:
            rng = np.random.default_rng([cfg.seed, step, 1])
            chosen = [data.examples[s][int(rng.integers(len(data.examples[s])))] for s in slides]
            chosen = chosen[rank * n_local:(rank + 1) * n_local] if world > 1 else chosen
            prompts = [format_prompt(spec, model.tokenizer, e.prompt_question, model.slide_token) for e in chosen]
            lm = {k: v.to(acc.device) for k, v in model.prepare_inputs(prompts, [e.answer for e in chosen]).items()}
        lr = set_lr(optimizer, step, cfg.optim)
        with acc.autocast():
            loss, terms = wrapped(batch, texts, lm)
        acc.backward(loss)
        optimizer_step(acc, optimizer, params, cfg.optim.grad_clip)
        done = step + 1
        elapsed = time.perf_counter() - t0
        if done % cfg.log_every == 0 or done == 1:
            # the contrastive terms are already global, the others per-process means
            rec = loss_record(acc, loss, terms, done, lr, elapsed)
            if rec is not None:
                append_log(log_path, rec)
                log.info("stage %d step %d/%d loss %.4f", cfg.stage, done, cfg.optim.steps, rec["loss"])
        if end_step(acc, ckpt, done, elapsed, cfg):
            break
    done = step + 1 if cfg.optim.steps > start_step else start_step
    train_seconds = time.perf_counter() - t0

    def export() -> dict[str, Any]:
        model.eval()
        model.save_pretrained(out / "model")
        spec.save(out / "model")
        metrics = {"stage": cfg.stage, "steps": done, "train_seconds": round(train_seconds, 1), "processes": world,
                   "slides": len(train_slides), "skipped_slides": data.skipped, "loss_weights": weights,
                   "loadavg": loadavg()}
        if cfg.data.val:
            from pathmllm.bench.slide_qa import evaluate_slide_qa

            metrics["val"] = evaluate_slide_qa(model, spec, cfg.data.val, cfg.data.stores, slides=cfg.data.slides,
                                               fmt=cfg.data.format, max_questions=cfg.data.max_eval,
                                               max_new_tokens=cfg.max_new_tokens, mpp=cfg.data.mpp).summary()
        return metrics

    metrics = finish_run(acc, ckpt, done, out, export)
    return TrainSlideResult(str(out), str(out / "model"), done, train_seconds, metrics)
