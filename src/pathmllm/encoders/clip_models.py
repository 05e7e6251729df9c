"""open_clip image towers from local checkpoints (QuiltNet and other CLIP-style models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pathmllm.encoders.base import CLIP_MEAN, CLIP_STD, EncoderSpec, PatchEncoder
from pathmllm.encoders.registry import register_dynamic, register_encoder
from pathmllm.encoders.weights import load_into, load_state_dict


class OpenClipImageEncoder(PatchEncoder):
    """``model.encode_image`` of an open_clip model (the projected image embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def open_clip_builder(arch: str) -> Any:
    def build(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
        import open_clip

        model = open_clip.create_model(arch, pretrained=None)
        if path is not None:
            load_into(model, load_state_dict(path), f"{spec.name} (open_clip {arch})")
        return OpenClipImageEncoder(spec, model)

    return build


def _tiny(spec: EncoderSpec, path: Path | None) -> PatchEncoder:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=1000, width=32, heads=2, layers=1),
    )
    if path is not None:
        load_into(model, load_state_dict(path), spec.name)
    return OpenClipImageEncoder(spec, model)


register_encoder(EncoderSpec(
    "quiltnet-b32", "open_clip", 512, mean=CLIP_MEAN, std=CLIP_STD, mpp=None, licence="MIT",
    architecture="open_clip ViT-B-32", weights_hint="wisdomik/QuiltNet-B-32: open_clip_pytorch_model.bin",
    description="QuiltNet (CLIP trained on Quilt-1M)",
))(open_clip_builder("ViT-B-32"))
register_encoder(EncoderSpec(
    "tiny-open-clip", "open_clip", 16, input_size=64, mean=CLIP_MEAN, std=CLIP_STD, needs_weights=False,
    licence="Apache-2.0", architecture="open_clip CLIP, 2 vision layers, width 32",
    description="tiny random open_clip model for tests",
))(_tiny)


def _dynamic(arch: str) -> tuple[EncoderSpec, Any]:
    """``open_clip:<arch>``: any open_clip architecture with a local checkpoint."""
    import open_clip

    if arch not in open_clip.list_models():
        raise KeyError(f"open_clip has no architecture {arch!r}")
    cfg = open_clip.get_model_config(arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    spec = EncoderSpec(f"open_clip:{arch}", "open_clip", int(cfg.get("embed_dim", 512)),
                       input_size=int(size if isinstance(size, int) else size[0]), mean=CLIP_MEAN, std=CLIP_STD,
                       mpp=None, architecture=arch, weights_hint=f"an open_clip {arch} checkpoint")
    return spec, open_clip_builder(arch)


register_dynamic("open_clip", _dynamic)
