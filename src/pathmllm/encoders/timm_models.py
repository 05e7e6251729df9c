"""timm encoders: the ViTs of UNI, UNI2-h, Virchow(2), Prov-GigaPath, H-optimus-0, and CNNs.

Architectures follow each model card's ``timm.create_model`` call; weights load from local
files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import timm
import torch

from pathmllm.encoders.base import EncoderSpec, PatchEncoder
from pathmllm.encoders.registry import register_dynamic, register_encoder
from pathmllm.encoders.weights import load_into, load_state_dict

Pool = Literal["model", "cls+mean"]


class TimmEncoder(PatchEncoder):
    """A timm model with ``num_classes=0``; ``pool="cls+mean"`` concatenates the class token and
    the mean of the patch tokens (Virchow's embedding)."""

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module, pool: Pool = "model") -> None:
        super().__init__(spec, model)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls+mean":
            tokens = self.model.forward_features(x)
            skip = 1 + int(getattr(self.model, "num_reg_tokens", 0) or 0)
            return torch.cat([tokens[:, 0], tokens[:, skip:].mean(dim=1)], dim=-1)
        return self.model(x)


def _swiglu_kwargs() -> dict[str, Any]:
    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


def timm_builder(arch: str, kwargs: dict[str, Any] | None = None, pool: Pool = "model",
                 ignore: tuple[str, ...] = ("head.", "fc.")) -> Any:
    def build(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
        kw = dict(kwargs or {})
        kw.update(_swiglu_kwargs() if kw.pop("swiglu", False) else {})
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
        if path is not None:
            load_into(model, load_state_dict(path), f"{spec.name} ({arch})", ignore=ignore)
        return TimmEncoder(spec, model, pool)

    return build


_H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)

_SPECS: list[tuple[EncoderSpec, str, dict[str, Any], Pool]] = [
    (EncoderSpec("uni", "timm", 1024, licence="CC-BY-NC-ND-4.0", architecture="ViT-L/16 (DINOv2)",
                 weights_hint="MahmoodLab/UNI: pytorch_model.bin", description="UNI, 100M pathology tiles"),
     "vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}, "model"),
    (EncoderSpec("uni2-h", "timm", 1536, licence="CC-BY-NC-ND-4.0", architecture="ViT-H/14, 8 registers, SwiGLU",
                 weights_hint="MahmoodLab/UNI2-h: pytorch_model.bin", description="UNI2-h"),
     "vit_giant_patch14_224", {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                               "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                               "dynamic_img_size": True, "swiglu": True}, "model"),
    (EncoderSpec("virchow", "timm", 2560, licence="Apache-2.0", architecture="ViT-H/14, SwiGLU; CLS + mean patch token",
                 weights_hint="paige-ai/Virchow: pytorch_model.bin", description="Virchow"),
     "vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                              "dynamic_img_size": True, "swiglu": True}, "cls+mean"),
    (EncoderSpec("virchow2", "timm", 2560, licence="CC-BY-NC-ND-4.0",
                 architecture="ViT-H/14, 4 registers, SwiGLU; CLS + mean patch token",
                 weights_hint="paige-ai/Virchow2: pytorch_model.bin", description="Virchow 2"),
     "vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                              "reg_tokens": 4, "dynamic_img_size": True, "swiglu": True}, "cls+mean"),
    (EncoderSpec("gigapath", "timm", 1536, licence="Apache-2.0", architecture="ViT-g/14 (DINOv2)",
                 weights_hint="prov-gigapath/prov-gigapath: pytorch_model.bin", description="Prov-GigaPath tile encoder"),
     "vit_giant_patch14_dinov2", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.33334}, "model"),
    (EncoderSpec("h-optimus-0", "timm", 1536, mean=_H_OPTIMUS_MEAN, std=_H_OPTIMUS_STD, licence="Apache-2.0",
                 architecture="ViT-g/14, 4 registers", weights_hint="bioptimus/H-optimus-0: pytorch_model.bin",
                 description="H-optimus-0"),
     "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False}, "model"),
    (EncoderSpec("vit-s16", "timm", 384, licence="Apache-2.0", architecture="ViT-S/16",
                 weights_hint="a timm vit_small_patch16_224 checkpoint", description="generic ViT-S/16"),
     "vit_small_patch16_224", {}, "model"),
    (EncoderSpec("resnet50-trunc", "timm", 1024, interpolation="bilinear", licence="Apache-2.0",
                 architecture="ResNet-50 to layer3, average-pooled (CLAM's baseline)",
                 weights_hint="an ImageNet resnet50 checkpoint (timm key names)", description="CLAM ResNet-50 trunc"),
     "resnet50", {}, "model"),
    (EncoderSpec("tiny-timm-vit", "timm", 64, input_size=160, needs_weights=False, licence="Apache-2.0",
                 architecture="timm test_vit", description="tiny random ViT for tests and CPU demos"),
     "test_vit", {}, "model"),
    (EncoderSpec("tiny-timm-cnn", "timm", 96, input_size=160, needs_weights=False, licence="Apache-2.0",
                 architecture="timm test_resnet", description="tiny random CNN for tests and CPU demos"),
     "test_resnet", {}, "model"),
]


class _ResNetTrunc(PatchEncoder):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[-1].mean(dim=(2, 3))


def _resnet50_trunc(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
    model = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(3,))
    if path is not None:
        state = {k: v for k, v in load_state_dict(path).items() if not k.startswith(("layer4.", "fc."))}
        load_into(model, state, "resnet50-trunc (ResNet-50 up to layer3)")
    return _ResNetTrunc(spec, model)


for _spec, _arch, _kw, _pool in _SPECS:
    if _spec.name == "resnet50-trunc":
        register_encoder(_spec)(_resnet50_trunc)
    else:
        register_encoder(_spec)(timm_builder(_arch, _kw, _pool))


def _dynamic(arch: str) -> tuple[EncoderSpec, Any]:
    """``timm:<arch>``: any timm architecture; its embed dim and input size come from timm."""
    if arch not in timm.list_models():
        raise KeyError(f"timm has no architecture {arch!r}")
    probe = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = probe.pretrained_cfg or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    spec = EncoderSpec(f"timm:{arch}", "timm", int(probe.num_features), input_size=size, mean=mean, std=std,  # type: ignore[arg-type]
                       architecture=arch, weights_hint=f"a checkpoint of timm's {arch}", mpp=None)
    return spec, timm_builder(arch)


register_dynamic("timm", _dynamic)
