"""Save and restore a whole :class:`~pathmllm.models.grounding.model.GroundingLM` as one folder.

Layout (``save_grounding(model, folder)``)::

    folder/
      grounding.json       region encoding, loss weights, SAM wrapper options, MoE layout
      backbone/            the VLM's config.json + processor files (tokenizer with the added
                           <region>, </region>, <region_feat>, <SEG> tokens, chat template)
      sam/config.json      the SAM config (+ image_encoder.json for a convolutional image encoder)
      model.safetensors    every weight of the model (VLM, region encoder, [SEG] head, SAM)

One weight file rather than ``backbone.save_pretrained`` + ``sam.save_pretrained``: a model
after the MoE stage has :class:`~pathmllm.models.grounding.moe.MoEFeedForward` layers that no
Hugging Face class can load, and the region encoder and ``[SEG]`` head belong to neither.
LoRA adapters (peft, injected in place) are **merged** into the saved weights without touching
the live model: each LoRA layer is written as ``base + get_delta_weight``. Tied tensors (the
input embedding and LM head of small Qwen2-VL models) are written as copies and re-tied on load.

:func:`load_grounding` rebuilds the modules from the configs with empty (meta) weights, converts
the MoE layers recorded in ``grounding.json`` and assigns the saved tensors (strict: a key that
is missing or unexpected is an error naming it), so a 7B model is not first initialised at
random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["GROUNDING_CONFIG", "is_grounding_folder", "load_grounding", "merged_state_dict", "save_grounding"]

GROUNDING_CONFIG = "grounding.json"
WEIGHTS = "model.safetensors"
BACKBONE_DIR = "backbone"
SAM_DIR = "sam"
FORMAT = "pathmllm-grounding"


def is_grounding_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / GROUNDING_CONFIG).is_file()


def merged_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every peft LoRA layer merged (``base + delta``) and its adapter
    keys dropped, as detached contiguous CPU copies. The module is not changed."""
    from peft.tuners.lora import LoraLayer

    lora_prefixes: dict[str, Any] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, LoraLayer):
            lora_prefixes[name + "." if name else ""] = sub
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        prefix = next((p for p in lora_prefixes if key.startswith(p)), None)
        if prefix is None:
            out[key] = value.detach().cpu().clone().contiguous()
            continue
        rest = key[len(prefix):]
        if not rest.startswith("base_layer."):
            continue  # lora_A / lora_B / dropout: merged below
        rest = rest[len("base_layer."):]
        tensor = value.detach()
        if rest == "weight":
            layer = lora_prefixes[prefix]
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    tensor = tensor + layer.get_delta_weight(adapter).to(tensor.dtype)
        out[prefix + rest] = tensor.cpu().clone().contiguous()
    return out


def _config(model: Any) -> dict[str, Any]:
    moe = getattr(model, "moe_layout", None)
    return {
        "format": FORMAT,
        "version": 1,
        "family": model.backbone.family,
        "region_mode": model.region_mode,
        "region_tokens": model.region_tokens,
        "region_heads": model.region_encoder.num_heads,
        "lm_weight": model.lm_weight,
        "mask_weight": model.mask_weight,
        "bce_weight": model.bce_weight,
        "dice_weight": model.dice_weight,
        "sam": {
            "freeze_vision_encoder": model.sam.freeze_vision_encoder,
            "freeze_prompt_encoder": model.sam.freeze_prompt_encoder,
            "centred_padding": model.sam.centred_padding,
        },
        "moe": dict(moe) if moe else None,
        "dtype": str(model.backbone.dtype).replace("torch.", ""),
    }


def save_grounding(model: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a GroundingLM, LoRA merged) to ``folder``; returns the folder."""
    from safetensors.torch import save_file

    from pathmllm.models.grounding.seg import IMAGE_ENCODER_FILE, image_encoder_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BACKBONE_DIR).mkdir(exist_ok=True)
    (folder / SAM_DIR).mkdir(exist_ok=True)
    model.backbone.model.config.save_pretrained(folder / BACKBONE_DIR)
    model.processor.save_pretrained(folder / BACKBONE_DIR)
    model.sam.sam.config.to_json_file(str(folder / SAM_DIR / "config.json"))
    enc = image_encoder_config(model.sam.sam)
    if enc is not None:
        (folder / SAM_DIR / IMAGE_ENCODER_FILE).write_text(json.dumps(enc, indent=2) + "\n")
    state = merged_state_dict(model)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS)
    tmp = folder / (GROUNDING_CONFIG + ".tmp")
    tmp.write_text(json.dumps(_config(model), indent=2) + "\n")
    os.replace(tmp, folder / GROUNDING_CONFIG)  # last: its presence marks a complete folder
    return folder


def load_grounding(folder: str | os.PathLike[str], *, device: str = "auto", dtype: Any = "auto") -> Any:
    """Restore a model written by :func:`save_grounding` (eval mode)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        SamConfig,
        SamModel,
    )

    from pathmllm.models.backbone import Backbone, CheckpointError, resolve_device, resolve_dtype
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.seg import (
        IMAGE_ENCODER_FILE,
        MaskDecoderWrapper,
        apply_image_encoder_config,
    )

    folder = Path(folder).expanduser()
    cfg_file = folder / GROUNDING_CONFIG
    if not folder.is_dir():
        raise CheckpointError(f"no grounding model folder at {folder} (train one with `pathmllm train ground`)")
    for needed in (cfg_file, folder / WEIGHTS, folder / BACKBONE_DIR / "config.json", folder / SAM_DIR / "config.json"):
        if not needed.exists():
            raise CheckpointError(f"{folder} is not a saved grounding model: {needed.relative_to(folder)} is missing "
                                  "(`pathmllm train ground` writes one to <out>/model).")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file} is not a pathmllm grounding config (format {cfg.get('format')!r})")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(cfg.get("dtype", "float32") if dtype == "auto" else dtype, dev)
    processor = AutoProcessor.from_pretrained(folder / BACKBONE_DIR, local_files_only=True)
    vlm_config = AutoConfig.from_pretrained(folder / BACKBONE_DIR, local_files_only=True)
    with init_empty_weights():
        vlm = AutoModelForImageTextToText.from_config(vlm_config)
        sam = SamModel(SamConfig.from_json_file(str(folder / SAM_DIR / "config.json")))
        enc_file = folder / SAM_DIR / IMAGE_ENCODER_FILE
        apply_image_encoder_config(sam, json.loads(enc_file.read_text()) if enc_file.is_file() else None)
    backbone = Backbone(model=vlm, processor=processor, family=cfg["family"], name=str(folder))
    s = cfg.get("sam", {})
    wrapper = MaskDecoderWrapper(sam, freeze_vision_encoder=s.get("freeze_vision_encoder", True),
                                 freeze_prompt_encoder=s.get("freeze_prompt_encoder", True),
                                 centred_padding=s.get("centred_padding", False))
    with init_empty_weights():
        model = GroundingLM(backbone, wrapper, region_mode=cfg["region_mode"], region_tokens=cfg["region_tokens"],
                            lm_weight=cfg["lm_weight"], mask_weight=cfg["mask_weight"],
                            bce_weight=cfg["bce_weight"], dice_weight=cfg["dice_weight"],
                            region_heads=cfg.get("region_heads", 4))
        moe = cfg.get("moe")
        if moe:
            model.make_moe(layers=moe["layers"], num_experts=moe["num_experts"], top_k=moe["top_k"])
    state = load_file(str(folder / WEIGHTS))
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{folder / WEIGHTS} does not match {cfg_file}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (was the folder written by another pathmllm version?)")
    if getattr(vlm.config, "tie_word_embeddings", False) or getattr(
            getattr(vlm.config, "text_config", None), "tie_word_embeddings", False):
        vlm.tie_weights()
    model.to(device=dev)
    model.backbone.model.to(dtype=torch_dtype)
    model.region_encoder.to(dtype=torch_dtype)
    return model.eval()
