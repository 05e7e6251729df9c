"""Hugging Face vision towers from local folders: CLIP, SigLIP, DINOv2, ViT (Phikon), PLIP.

A folder is what ``save_pretrained`` writes (``config.json`` + weights, optionally
``preprocessor_config.json``, whose mean, std and size then override the defaults).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from pathmllm.encoders.base import CLIP_MEAN, CLIP_STD, EncoderSpec, PatchEncoder
from pathmllm.encoders.registry import register_dynamic, register_encoder
from pathmllm.encoders.weights import WeightsMismatchError, WeightsNotFoundError

Pooling = Literal["cls", "pooler", "image_embeds", "cls+mean"]


class HFVisionEncoder(PatchEncoder):
    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, pooling: Pooling) -> None:
        super().__init__(spec, model)
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.pooling == "image_embeds":
            return out.image_embeds
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls+mean":
            return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)
        return hidden[:, 0]


def _with_preprocessor(spec: EncoderSpec, folder: Path) -> EncoderSpec:
    f = folder / "preprocessor_config.json"
    if not f.exists():
        return spec
    cfg = json.loads(f.read_text())
    size = cfg.get("crop_size") or cfg.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    from dataclasses import replace

    return replace(
        spec,
        mean=tuple(cfg.get("image_mean", spec.mean)),  # type: ignore[arg-type]
        std=tuple(cfg.get("image_std", spec.std)),  # type: ignore[arg-type]
        input_size=int(side or spec.input_size),
    )


def _load(kind: str, folder: Path, what: str) -> torch.nn.Module:
    import transformers

    if not folder.is_dir() or not (folder / "config.json").exists():
        raise WeightsNotFoundError(
            f"{what}: {folder} is not a Hugging Face model folder (it needs config.json and the weights, "
            "as save_pretrained writes them)"
        )
    cls = getattr(transformers, kind)
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsMismatchError(f"{what}: cannot load {folder} as {kind} ({exc})") from exc


def hf_builder(kind: str, pooling: Pooling, tiny_config: Any = None) -> Any:
    def build(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
        if path is None:
            if tiny_config is None:
                raise WeightsNotFoundError(f"{spec.name} needs a local model folder")
            import transformers

            model = getattr(transformers, kind)(tiny_config())
            return HFVisionEncoder(spec, model, pooling)
        model = _load(kind, path, spec.name)
        return HFVisionEncoder(_with_preprocessor(spec, path), model, pooling)

    return build


def _tiny_dinov2() -> Any:
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=64, patch_size=16)


def _tiny_clip() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=64, patch_size=16, projection_dim=16)


_SPECS = [
    (EncoderSpec("phikon", "hf", 768, licence="Owkin non-commercial", architecture="ViT-B/16 (iBOT)",
                 weights_hint="owkin/phikon folder (config.json + model.safetensors)", description="Phikon"),
     "ViTModel", "cls", None),
    (EncoderSpec("phikon-v2", "hf", 1024, licence="Owkin non-commercial", architecture="ViT-L/16 (DINOv2)",
                 weights_hint="owkin/phikon-v2 folder", description="Phikon-v2"),
     "AutoModel", "cls", None),
    (EncoderSpec("plip", "hf", 512, mean=CLIP_MEAN, std=CLIP_STD, mpp=None, licence="MIT (research use)",
                 architecture="CLIP ViT-B/32 image tower", weights_hint="vinid/plip folder", description="PLIP"),
     "CLIPVisionModelWithProjection", "image_embeds", None),
    (EncoderSpec("hf-clip", "hf", 512, mean=CLIP_MEAN, std=CLIP_STD, mpp=None, licence="see the checkpoint",
                 architecture="CLIP image tower", weights_hint="any CLIP folder, e.g. openai/clip-vit-base-patch16"),
     "CLIPVisionModelWithProjection", "image_embeds", None),
    (EncoderSpec("hf-siglip", "hf", 768, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mpp=None,
                 licence="see the checkpoint", architecture="SigLIP image tower",
                 weights_hint="a SigLIP folder, e.g. google/siglip-base-patch16-224"),
     "SiglipVisionModel", "pooler", None),
    (EncoderSpec("hf-dinov2", "hf", 768, licence="see the checkpoint", architecture="DINOv2",
                 weights_hint="a DINOv2 folder, e.g. facebook/dinov2-base"),
     "Dinov2Model", "cls", None),
    (EncoderSpec("tiny-hf-dinov2", "hf", 32, input_size=64, needs_weights=False, licence="Apache-2.0",
                 architecture="DINOv2, 2 layers, width 32", description="tiny random DINOv2 for tests"),
     "Dinov2Model", "cls", _tiny_dinov2),
    (EncoderSpec("tiny-hf-clip", "hf", 16, input_size=64, mean=CLIP_MEAN, std=CLIP_STD, needs_weights=False,
                 licence="Apache-2.0", architecture="CLIP vision, 2 layers, width 32",
                 description="tiny random CLIP image tower for tests"),
     "CLIPVisionModelWithProjection", "image_embeds", _tiny_clip),
]

for _spec, _kind, _pool, _tiny in _SPECS:
    register_encoder(_spec)(hf_builder(_kind, _pool, _tiny))  # type: ignore[arg-type]


def _dynamic(folder: str) -> tuple[EncoderSpec, Any]:
    """``hf:<folder>``: AutoModel from a local folder; CLS token of the last hidden state."""
    path = Path(folder).expanduser()
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise WeightsNotFoundError(f"hf:{folder}: no config.json in {path}")
    cfg = json.loads(cfg_file.read_text())
    dim = int(cfg.get("hidden_size") or cfg.get("vision_config", {}).get("hidden_size", 0))
    spec = EncoderSpec(f"hf:{folder}", "hf", dim, needs_weights=False, architecture=str(cfg.get("model_type")), mpp=None)

    def build(spec: EncoderSpec, _: Path | None) -> PatchEncoder:
        return HFVisionEncoder(_with_preprocessor(spec, path), _load("AutoModel", path, spec.name), "cls")

    return spec, build


register_dynamic("hf", _dynamic)
