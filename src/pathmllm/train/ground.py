"""Recipe: the three MedPLIB stages of the grounding model (region prompts in, ``<SEG>`` masks out).

    pathmllm train ground --stage vl  --config configs/ground/kvasir.yaml                    # VL expert
    pathmllm train ground --stage seg --config ... model.init=out/ground-vl/model             # grounding expert
    pathmllm train ground --stage moe --config ... model.init=out/ground-seg/model \\
        "moe.experts=[out/ground-vl/model,out/ground-seg/model]"                             # MoE + router
    accelerate launch --multi_gpu -m pathmllm train ground --stage seg --config ...           # DDP on GPUs

Stages (defaults; ``trainable``, ``data.tasks`` and every loss weight can be set in the config):

======  ================================  ====================================  ===========================
stage   records (``data.tasks``)          trains (``trainable`` groups / LoRA)   losses (default weights)
======  ================================  ====================================  ===========================
vl      vqa, region                       region encoder, embeddings; LoRA on    LM 1
                                          attention and FFN (``lm``: full)
seg     grounding                         [SEG] head, SAM mask decoder,          LM 1, mask 1
                                          embeddings; LoRA on the FFN only       (BCE 1 + Dice 5)
moe     vqa, region, grounding            router, [SEG] head, SAM mask decoder,  LM 1, mask 1
                                          embeddings (+ LoRA when enabled)       (BCE 2 + Dice 0.5),
                                                                                 load balancing 0.01
======  ================================  ====================================  ===========================

The ``moe`` stage starts from ``model.init`` (normally the seg stage's model, itself started from
the vl stage's model, so attention, vision tower and region encoder are shared) and turns the
FFN of the ``moe.layers`` into ``moe.experts``: expert *i*'s FFN weights are read from the
*i*-th model folder in ``moe.experts`` (default: ``[vl model, init]``) -- MedPLIB's
vision-language expert and grounding expert -- and a router picks one per token (top-1).
Routing statistics (fraction of tokens per expert, per layer, over the whole global batch) are
logged every ``log_every`` steps per token type (image, region, prompt text, answer text,
``<SEG>``) and per modality, with each group's token count (``routing_tokens``).

Trainable groups: ``vision`` (the VLM's vision tower), ``lm`` (every LM weight), ``lm_ffn`` (the
LM's FFNs), ``embeddings`` (input embeddings + LM head, trained fully as LISA and MedPLIB do, so
the new ``<SEG>`` and region tokens can be learnt beside LoRA),
``region`` (region encoder), ``seg_head``, ``sam_decoder``, ``sam_vision`` (SAM's image encoder:
only sensible for a tiny random SAM), ``router``, ``experts``. With ``lora.enabled`` the LoRA
adapters train in place of ``lm``/``lm_ffn`` (naming both is an error).

Data: MeCoVQA-style JSON (:func:`pathmllm.data.mecovqa.read_mecovqa`; ``pathmllm data kvasir``
converts Kvasir-SEG), images under ``data.image_root``. Bad records are skipped and listed in
``OUT/skipped.json``.

Outputs in ``out``: ``config.yaml``, ``log.jsonl``, ``checkpoints/last`` (accelerate state;
``--resume`` continues exactly), ``model/`` (:meth:`GroundingLM.save_pretrained`, LoRA merged:
the input of the next stage and of ``pathmllm ask``/``pathmllm ground``) and ``metrics.json``
(held-out evaluation when ``data.eval`` is set).
"""

from __future__ import annotations

import logging
import os
import time
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

__all__ = ["TrainGroundConfig", "TrainGroundResult", "load_config", "set_trainable", "token_groups", "train"]

STAGES = ("vl", "seg", "moe")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
FFN = ["gate_proj", "up_proj", "down_proj"]
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vl": {"tasks": ["vqa", "region"], "trainable": ["region", "embeddings"], "lora_targets": ATTENTION + FFN,
           "losses": {"lm": 1.0, "mask": 0.0, "bce": 1.0, "dice": 1.0, "balance": 0.0, "z": 0.0}},
    "seg": {"tasks": ["grounding"], "trainable": ["seg_head", "sam_decoder", "embeddings"], "lora_targets": FFN,
            "losses": {"lm": 1.0, "mask": 1.0, "bce": 1.0, "dice": 5.0, "balance": 0.0, "z": 0.0}},
    "moe": {"tasks": ["vqa", "region", "grounding"], "trainable": ["router", "seg_head", "sam_decoder", "embeddings"],
            "lora_targets": ATTENTION,
            "losses": {"lm": 1.0, "mask": 1.0, "bce": 2.0, "dice": 0.5, "balance": 0.01, "z": 0.0}},
}
GROUPS = ("vision", "lm", "lm_ffn", "embeddings", "region", "seg_head", "sam_decoder", "sam_vision", "router",
          "experts")


@dataclass
class GroundModelConfig:
    """The model a run starts from."""

    init: str | None = None
    """A saved grounding model (``OUT/model`` of the previous stage); None builds a new one."""
    backbone: str = "tiny-qwen2-vl"
    """New model: Qwen2-VL-family VLM (local folder, ``$PATHMLLM_WEIGHTS`` name or tiny preset)."""
    sam: str = "tiny-sam"
    """New model: local Hugging Face SAM folder (SAM, MedSAM, SAM-Med2D converted), or a random preset:
    ``tiny-sam`` (SAM's ViT image encoder) or ``tiny-litesam`` (a small convolutional image encoder,
    which learns from scratch on a CPU where the ViT does not)."""
    sam_image_size: int = 64
    """Presets only: their input size (multiple of 8)."""
    region_mode: str = "single"
    """``single`` (one pooled token, MedPLIB) or ``multi`` (``region_tokens`` attention-pooled tokens)."""
    region_tokens: int = 1
    sam_centred_padding: bool = False
    """Pad SAM's input centred (SAM-Med2D) instead of bottom/right (SAM)."""


@dataclass
class GroundLossConfig:
    """Loss weights; None takes the stage's default (module docstring)."""

    lm: float | None = None
    mask: float | None = None
    bce: float | None = None
    dice: float | None = None
    balance: float | None = None
    """MoE load-balancing loss (Switch)."""
    z: float | None = None
    """MoE router z-loss."""

    def resolved(self, stage: str) -> dict[str, float]:
        out = dict(STAGE_DEFAULTS[stage]["losses"])
        for k in out:
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v)
        return out


@dataclass
class GroundMoeConfig:
    """The ``moe`` stage's experts."""

    experts: list[str] = field(default_factory=list)
    """Model folders whose FFNs become the experts (default ``[model.vl_model, model.init]``)."""
    vl_model: str | None = None
    """The vl stage's model (the default first expert)."""
    layers: Any = "all"
    """LM layers to convert: ``all`` or a list of indices."""
    top_k: int = 1
    jitter: float = 0.0


@dataclass
class GroundDataConfig:
    train: str = ""
    """MeCoVQA JSON of the training records."""
    image_root: str = ""
    """Folder the records' image and mask paths are relative to."""
    eval: str | None = None
    """MeCoVQA JSON evaluated after training (``metrics.json``)."""
    eval_image_root: str | None = None
    """Defaults to ``image_root``."""
    eval_split: str | None = None
    """Evaluate only records whose ``split`` field is this (e.g. ``test``)."""
    tasks: list[str] | None = None
    """Record tasks to train on (``vqa``, ``region``, ``grounding``); None: the stage's default."""
    split: str | None = None
    """Keep only records whose ``split`` field is this (the Kvasir converter writes train/test)."""
    max_eval: int | None = 200
    flip: bool = True
    """Random horizontal / vertical flips of image and masks together."""


@dataclass
class GroundLoraConfig(LoraSettings):
    """LoRA on the LM; ``target_modules`` empty: the stage's default (module docstring)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    target_modules: list[str] = field(default_factory=list)


@dataclass
class GroundOptimConfig(OptimConfig):
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1


@dataclass
class TrainGroundConfig:
    """Everything a ``pathmllm train ground`` run needs; the YAML file mirrors it."""

    out: str = "out/ground"
    stage: str = "vl"
    trainable: Any = None
    """Trainable groups (module docstring): a list, or ``{stage: list}`` so one file serves the three
    stages; None (or a stage missing from the mapping): the stage's default."""
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    threads: int | None = None
    max_minutes: float | None = None
    max_new_tokens: int = 8
    model: GroundModelConfig = field(default_factory=GroundModelConfig)
    moe: GroundMoeConfig = field(default_factory=GroundMoeConfig)
    losses: GroundLossConfig = field(default_factory=GroundLossConfig)
    lora: GroundLoraConfig = field(default_factory=GroundLoraConfig)
    optim: GroundOptimConfig = field(default_factory=GroundOptimConfig)
    data: GroundDataConfig = field(default_factory=GroundDataConfig)
    log_every: int = 10
    checkpoint_every: int = 100


@dataclass
class TrainGroundResult:
    out: str
    model_dir: str
    steps: int
    train_seconds: float
    metrics: dict[str, Any]


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                stage: str | None = None) -> TrainGroundConfig:
    """Read a YAML recipe and apply ``a.b=value`` overrides (``stage`` wins over the file)."""
    cfg = load_yaml_config(TrainGroundConfig, path, overrides, example="configs/ground/kvasir.yaml")
    if stage is not None:
        cfg.stage = stage
    if cfg.stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    if not cfg.data.train or not cfg.data.image_root:
        raise ValueError("data.train (a MeCoVQA JSON) and data.image_root (the folder its paths are relative to) "
                         "are required")
    if cfg.stage == "moe":
        if cfg.model.init is None:
            raise ValueError("stage moe starts from a trained model: set model.init=OUT/model of the seg stage")
        if not cfg.moe.experts and cfg.moe.vl_model is None:
            raise ValueError("stage moe needs the expert models: set moe.vl_model=OUT/model of the vl stage "
                             "(experts = [vl_model, model.init]) or moe.experts=[...]")
    groups = stage_groups(cfg)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown trainable group(s) {bad}; choose from {', '.join(GROUPS)}")
    if cfg.lora.enabled and {"lm", "lm_ffn"} & set(groups):
        raise ValueError("trainable 'lm'/'lm_ffn' (full fine-tuning) and lora.enabled exclude each other: drop them "
                         "to train LoRA adapters, or set lora.enabled=false")
    if cfg.optim.steps < 1 or cfg.optim.batch_size < 1:
        raise ValueError("optim.steps and optim.batch_size must be >= 1")
    if cfg.log_every < 1 or cfg.checkpoint_every < 0:
        raise ValueError("log_every must be >= 1 and checkpoint_every >= 0 (0: only at the end)")
    layers = cfg.moe.layers
    if not (layers == "all" or (isinstance(layers, list) and layers and all(isinstance(i, int) for i in layers))):
        raise ValueError(f"moe.layers must be 'all' or a non-empty list of layer indices, got {layers!r}")
    return cfg


def stage_groups(cfg: TrainGroundConfig) -> list[str]:
    """The trainable groups of ``cfg.stage`` (``trainable`` as a list or ``{stage: list}``)."""
    t = cfg.trainable
    if isinstance(t, dict):
        unknown = [k for k in t if k not in STAGES]
        if unknown:
            raise ValueError(f"trainable has unknown stage key(s) {unknown}; use {', '.join(STAGES)}")
        t = t.get(cfg.stage)
    if t is None:
        return list(STAGE_DEFAULTS[cfg.stage]["trainable"])
    if isinstance(t, str) or not isinstance(t, list):
        raise ValueError(f"trainable must be a list of groups or {{stage: list}}, got {t!r}")
    return [str(g) for g in t]


# --------------------------------------------------------------------------------------------
# model


def _new_model(cfg: TrainGroundConfig, device: str) -> Any:
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.seg import (
        SAM_PRESETS,
        MaskDecoderWrapper,
        build_sam_preset,
        load_sam,
    )

    backbone = load_backbone(cfg.model.backbone, device=device, dtype="float32")
    if cfg.model.sam in SAM_PRESETS:
        sam = build_sam_preset(cfg.model.sam, seed=cfg.seed, image_size=cfg.model.sam_image_size).to(device)
    else:
        sam = load_sam(cfg.model.sam, device=device)
    wrapper = MaskDecoderWrapper(sam, centred_padding=cfg.model.sam_centred_padding)
    return GroundingLM(backbone, wrapper, region_mode=cfg.model.region_mode, region_tokens=cfg.model.region_tokens)


def _expert_ffns(folders: list[str], layers: list[int]) -> dict[int, list[dict[str, Any]]]:
    """``{layer: [FFN state dict of expert 0, ...]}`` read from saved grounding models (only the
    FFN tensors are loaded)."""
    from safetensors import safe_open

    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.grounding.saving import WEIGHTS, is_grounding_folder

    out: dict[int, list[dict[str, Any]]] = {i: [] for i in layers}
    for folder in folders:
        if not is_grounding_folder(folder):
            raise CheckpointError(f"moe expert {folder} is not a saved grounding model (OUT/model of a vl or seg run)")
        with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as f:
            keys = list(f.keys())
            for i in layers:
                prefix = next((k.split(f"layers.{i}.mlp.")[0] + f"layers.{i}.mlp." for k in keys
                               if f"language_model.layers.{i}.mlp." in k), None)
                if prefix is None:
                    raise CheckpointError(f"{folder}: no FFN weights for LM layer {i}")
                if any(k.startswith(prefix + "experts.") for k in keys):
                    raise CheckpointError(f"{folder} is already a Mixture-of-Experts model; give the vl and seg models")
                out[i].append({k[len(prefix):]: f.get_tensor(k) for k in keys if k.startswith(prefix)})
    return out


def build_model(cfg: TrainGroundConfig, device: str) -> Any:
    """The stage's starting model (new, ``model.init``, or ``init`` + MoE experts)."""
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.moe import decoder_layers

    model = GroundingLM.from_pretrained(cfg.model.init, device=device, dtype="float32") if cfg.model.init \
        else _new_model(cfg, device)
    if cfg.stage == "moe":
        if model.moe_layout is not None:
            return model  # continuing a MoE model
        experts = list(cfg.moe.experts) or [str(cfg.moe.vl_model), str(cfg.model.init)]
        n = len(decoder_layers(model.model))
        if cfg.moe.layers == "all":
            layers = list(range(n))
        else:
            bad = [i for i in cfg.moe.layers if not -n <= int(i) < n]
            if bad:
                raise ValueError(f"moe.layers {bad} out of range: the LM has {n} decoder layers (0..{n - 1}, "
                                 "or negative from the end)")
            layers = [int(i) % n for i in cfg.moe.layers]
            if len(set(layers)) != len(layers):
                raise ValueError(f"moe.layers {cfg.moe.layers} name a layer twice (on {n} layers)")
        states = _expert_ffns(experts, layers)
        model.make_moe(layers, num_experts=len(experts), top_k=cfg.moe.top_k, jitter=cfg.moe.jitter,
                       expert_states=lambda i: states[i])
    return model


def _group_of(name: str) -> set[str]:
    groups = set()
    if name.startswith("model.model.visual."):
        groups.add("vision")
    if name.startswith(("model.model.language_model.", "model.lm_head.")):
        groups.add("lm")
        if ".mlp." in name and ".router." not in name:
            groups.add("lm_ffn")
        if ".router." in name:
            groups.add("router")
        if ".experts." in name:
            groups.add("experts")
        if "embed_tokens" in name or name.startswith("model.lm_head."):
            groups.add("embeddings")
    if name.startswith("region_encoder."):
        groups.add("region")
    if name.startswith("seg_head."):
        groups.add("seg_head")
    if name.startswith("sam.sam.mask_decoder."):
        groups.add("sam_decoder")
    if name.startswith("sam.sam.vision_encoder."):
        groups.add("sam_vision")
    return groups


def set_trainable(model: Any, groups: list[str], lora: bool) -> list[str]:
    """Freeze everything, then unfreeze ``groups`` (and the LoRA adapters); returns the names of
    the trainable tensors. A group that matches no tensor of this model is an error."""
    for p in model.parameters():
        p.requires_grad_(False)
    hit: dict[str, int] = {g: 0 for g in groups}
    names = []
    for name, p in model.named_parameters():
        if lora and "lora_" in name:
            p.requires_grad_(True)
        else:
            mine = _group_of(name) & set(groups)
            if "router" not in groups and "lm" in groups and ".router." in name:
                mine.discard("lm")
            if not mine:
                continue
            for g in mine:
                hit[g] += 1
            p.requires_grad_(True)
        names.append(name)
    empty = [g for g, n in hit.items() if n == 0]
    if empty:
        raise ValueError(f"trainable group(s) {empty} match no weight of this model "
                         "(router/experts exist only in the moe stage)")
    model.sam.freeze_vision_encoder = "sam_vision" not in groups
    model.sam.freeze_prompt_encoder = True
    return names


def apply_lora(model: Any, cfg: TrainGroundConfig) -> None:
    """Inject LoRA adapters into the LM (in place: ``model.model`` stays the same object)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.target_modules or STAGE_DEFAULTS[cfg.stage]["lora_targets"]
    # only the language model's linear layers (the vision tower has its own q/k/v names)
    pattern = rf"^model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(experts\.\d+\.)?({'|'.join(targets)})$"
    get_peft_model(model.model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                           target_modules=pattern))


# --------------------------------------------------------------------------------------------
# data


@dataclass
class GroundingExample:
    image: np.ndarray
    question: str
    answer: str
    region: np.ndarray | None
    target: np.ndarray | None
    modality: str


class ExampleCache:
    """Decoded images and masks of the records, loaded once (a record's files are read lazily)."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self._cache: dict[int, GroundingExample] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> GroundingExample:
        if i not in self._cache:
            from PIL import Image

            from pathmllm.data.mecovqa import load_mask

            rec = self.records[i]
            with Image.open(rec.image) as im:
                image = np.asarray(im.convert("RGB"))
            hw = image.shape[:2]
            self._cache[i] = GroundingExample(
                image, rec.question, rec.answer,
                load_mask(rec.region_mask, hw) if rec.region_mask is not None else None,
                load_mask(rec.target_mask, hw) if rec.target_mask is not None else None, rec.modality)
        return self._cache[i]


def flipped(ex: GroundingExample, h: bool, v: bool) -> GroundingExample:
    def f(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        if h:
            a = a[:, ::-1]
        if v:
            a = a[::-1]
        return np.ascontiguousarray(a)

    return GroundingExample(f(ex.image), ex.question, ex.answer, f(ex.region), f(ex.target), ex.modality)


def load_records(cfg: TrainGroundConfig, out: Path | None) -> list[Any]:
    from pathmllm.data.mecovqa import read_mecovqa

    records, problems = read_mecovqa(cfg.data.train, cfg.data.image_root)
    skipped = [p for p in problems if p.skipped]
    if out is not None and problems:
        from pathmllm.utils.atomic import write_json

        write_json(out / "skipped.json", [asdict(p) for p in problems])
    if skipped:
        log.warning("%s: %d records skipped (first: %s)", cfg.data.train, len(skipped), skipped[0])
    tasks = cfg.data.tasks or STAGE_DEFAULTS[cfg.stage]["tasks"]
    kept = [r for r in records if r.task in tasks and (cfg.data.split is None or r.meta.get("split") == cfg.data.split)]
    no_target = [r for r in kept if r.has_seg and r.target_mask is None]
    kept = [r for r in kept if not (r.has_seg and r.target_mask is None)]  # <SEG> without a mask: nothing to learn
    if no_target:
        log.warning("%d <SEG> records without a target mask are left out of training", len(no_target))
    if not kept:
        raise ValueError(f"{cfg.data.train}: no usable {'/'.join(tasks)} records for stage {cfg.stage} "
                         f"({len(records)} read, {len(skipped)} skipped)")
    return kept


def batch_indices(step: int, n: int, batch: int, seed: int) -> list[int]:
    """The global batch of ``step``: distinct records, deterministic in ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    return [int(i) for i in rng.choice(n, size=min(batch, n), replace=False)]


# --------------------------------------------------------------------------------------------
# routing statistics


def token_groups(model: Any, modalities: list[str], all_modalities: list[str] | None = None) -> dict[str, Any]:
    """Boolean ``(B, T)`` masks of the last forward's tokens by type and by modality.

    ``modalities``: each row's; ``all_modalities``: the modality groups to make (default: those
    of the rows), so that every process makes the same groups."""
    batch = model.last_batch
    ids, labels, attn = batch["input_ids"], batch["labels"], batch["attention_mask"].bool()
    image_id = getattr(model.model.config, "image_token_id", None)
    image = ids == image_id if image_id is not None else ids.new_zeros(ids.shape, dtype=bool)
    region = (ids == model.region_feat_id) | (ids == model.region_start_id) | (ids == model.region_end_id)
    seg = ids == model.seg_token_id
    answer = (labels != -100) & ~seg
    groups = {"image": image & attn, "region": region & attn, "seg": seg & attn, "answer_text": answer & attn,
              "prompt_text": attn & ~image & ~region & ~seg & ~answer}
    for m in sorted(set(all_modalities if all_modalities is not None else modalities)):
        rows = ids.new_tensor([x == m for x in modalities], dtype=bool)
        groups[f"modality:{m}"] = attn & rows[:, None]
    return groups


def global_routing(acc: Any, model: Any, modalities: list[str],
                   all_modalities: list[str]) -> tuple[dict[str, Any], dict[str, int]] | None:
    """Routing statistics of the last step over the whole global batch, and the number of tokens
    of each group they are over: every process counts its tokens' assignments and the counts are
    summed across processes (every process calls this; None without MoE layers)."""
    import torch

    from pathmllm.models.grounding.moe import count_fractions, routing_counts

    mods = model.moe_modules()
    if not mods:
        return None
    counts = routing_counts(mods, token_groups(model, modalities, all_modalities))
    groups = list(counts)
    layers = list(counts[groups[0]])
    table = torch.stack([torch.stack([counts[g][layer] for layer in layers]) for g in groups])  # (G, L, N)
    if acc.num_processes > 1:
        table = acc.reduce(table.to(acc.device), reduction="sum")
    table = table.cpu()
    fractions = _round_stats({g: {layer: count_fractions(table[i, j]) for j, layer in enumerate(layers)}
                              for i, g in enumerate(groups)})
    tokens = {g: int(round(float(table[i, 0].sum()) / mods[0].top_k)) for i, g in enumerate(groups)}
    return fractions, tokens


def _round_stats(stats: dict[str, dict[int, list[float]]]) -> dict[str, dict[str, list[float | None]]]:
    return {g: {str(layer): [None if v != v else round(v, 4) for v in fr] for layer, fr in per.items()}
            for g, per in stats.items()}


# --------------------------------------------------------------------------------------------
# training


def _module_class() -> Any:
    import torch

    from pathmllm.models.grounding.moe import load_balancing_loss, router_z_loss

    class GroundTrainingModule(torch.nn.Module):
        """The model + the MoE auxiliary losses, so DDP sees one forward."""

        def __init__(self, model: Any, weights: dict[str, float]) -> None:
            super().__init__()
            self.model = model
            self.weights = weights

        def forward(self, examples: list[GroundingExample]) -> tuple[Any, dict[str, Any]]:
            m = self.model
            total, terms = m([e.image for e in examples], [e.question for e in examples],
                             [e.answer for e in examples], [e.region for e in examples],
                             [e.target if self.weights["mask"] else None for e in examples])
            mods = m.moe_modules()
            if mods and (self.weights["balance"] or self.weights["z"]):
                attn = m.last_batch["attention_mask"]
                lb = load_balancing_loss(mods, attn)
                z = router_z_loss(mods, attn)
                total = total + self.weights["balance"] * lb + self.weights["z"] * z
                terms = {**terms, "balance": lb.detach(), "z": z.detach()}
            return total, terms

    return GroundTrainingModule


def train(cfg: TrainGroundConfig, resume: bool = False, overwrite: bool = False) -> TrainGroundResult:
    """Run one stage (module docstring)."""
    out = Path(cfg.out)
    ckpt, log_path = run_paths(out, resume, overwrite)
    acc = make_accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index
    weights = cfg.losses.resolved(cfg.stage)
    if acc.is_main_process:
        start_run_dir(out, cfg, resume, overwrite)
    acc.wait_for_everyone()
    records = load_records(cfg, out if acc.is_main_process else None)
    data = ExampleCache(records)

    model = build_model(cfg, str(acc.device))
    # this stage's loss weights (a model folder carries those of the stage that wrote it)
    model.lm_weight, model.mask_weight = weights["lm"], weights["mask"]
    model.bce_weight, model.dice_weight = weights["bce"], weights["dice"]
    if cfg.lora.enabled:
        apply_lora(model, cfg)
    trainable = set_trainable(model, stage_groups(cfg), cfg.lora.enabled)
    model.to(acc.device)
    model.train()

    module = _module_class()(model, weights)
    params, wrapped, optimizer = make_optimizer(acc, module, cfg.optim)
    start_step = 0
    if resume:
        start_step = load_checkpoint(acc, ckpt, log_path)
        log.info("resumed stage %s from step %d", cfg.stage, start_step)
    log.info("stage %s: %d records, %d trainable tensors, losses %s", cfg.stage, len(records), len(trainable),
             weights)

    modalities = sorted({r.modality for r in records})  # the same routing groups on every process
    t0 = time.perf_counter()
    step = start_step
    for step in range(start_step, cfg.optim.steps):
        idx = batch_indices(step, len(data), cfg.optim.batch_size, cfg.seed)
        n_local = max(1, len(idx) // world)
        mine = idx[rank * n_local:(rank + 1) * n_local] if world > 1 else idx
        rng = np.random.default_rng([cfg.seed, step, 1, rank])
        examples = []
        for i in mine:
            ex = data[i]
            if cfg.data.flip:
                ex = flipped(ex, bool(rng.integers(2)), bool(rng.integers(2)))
            examples.append(ex)
        lr = set_lr(optimizer, step, cfg.optim)
        with acc.autocast():
            loss, terms = wrapped(examples)
        acc.backward(loss)
        optimizer_step(acc, optimizer, params, cfg.optim.grad_clip)
        done = step + 1
        elapsed = time.perf_counter() - t0
        if done % cfg.log_every == 0 or done == 1:
            routing = global_routing(acc, model, [e.modality for e in examples], modalities)
            rec = loss_record(acc, loss, terms, done, lr, elapsed)
            if rec is not None:
                if routing is not None:
                    rec["routing"], rec["routing_tokens"] = routing
                append_log(log_path, rec)
                log.info("stage %s step %d/%d loss %.4f", cfg.stage, done, cfg.optim.steps, rec["loss"])
        if end_step(acc, ckpt, done, elapsed, cfg):
            break
    done = step + 1 if cfg.optim.steps > start_step else start_step
    train_seconds = time.perf_counter() - t0

    def export() -> dict[str, Any]:
        model.eval()
        model.save_pretrained(out / "model")
        metrics = {"stage": cfg.stage, "steps": done, "train_seconds": round(train_seconds, 1), "processes": world,
                   "records": len(records), "trainable_tensors": len(trainable), "loss_weights": weights,
                   "moe": model.moe_layout, "loadavg": loadavg()}
        if cfg.data.eval:
            metrics["eval"] = evaluate_file(model, cfg.data.eval, cfg.data.eval_image_root or cfg.data.image_root,
                                            split=cfg.data.eval_split, max_items=cfg.data.max_eval,
                                            max_new_tokens=cfg.max_new_tokens)
        return metrics

    metrics = finish_run(acc, ckpt, done, out, export)
    return TrainGroundResult(str(out), str(out / "model"), done, train_seconds, metrics)


def evaluate_file(model: Any, path: str, image_root: str, *, split: str | None = None,
                  max_items: int | None = None, max_new_tokens: int = 8) -> dict[str, Any]:
    """Evaluate ``model`` on a MeCoVQA file (records of ``split`` only when given)."""
    import torch

    from pathmllm.bench.grounding import evaluate_grounding
    from pathmllm.data.mecovqa import read_mecovqa

    records, _ = read_mecovqa(path, image_root)
    if split is not None:
        records = [r for r in records if r.meta.get("split") == split]
    with torch.no_grad():
        result = evaluate_grounding(model, records, max_items=max_items, max_new_tokens=max_new_tokens)
    result.pop("predictions")
    return result
