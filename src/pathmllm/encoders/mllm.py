"""``mllm:<model>``: the universal MLLM embedder (MLLM4PUE) as a patch encoder.

``pathmllm slide features SLIDE -e mllm:tiny-qwen2-vl`` (or ``mllm:/path/to/checkpoint``) embeds
tissue patches with the image prompt, so patch features and text queries share one space
(search patches by text with ``pathmllm index``). The VLM's own processor resizes and
normalises, so :meth:`preprocess` passes the uint8 patches through unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathmllm.encoders.base import EncoderSpec, PatchEncoder, to_chw_uint8
from pathmllm.encoders.registry import register_dynamic


class MLLMPatchEncoder(PatchEncoder):
    """``forward((B, 3, H, W) uint8) -> (B, hidden)`` unit vectors from the VLM's image prompt."""

    def __init__(self, spec: EncoderSpec, embedder: Any) -> None:
        super().__init__(spec, embedder.module)
        self.embedder = embedder

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return to_chw_uint8(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arrays = [np.ascontiguousarray(a) for a in x.permute(0, 2, 3, 1).cpu().numpy()]
        inputs = self.embedder.build_inputs("image", arrays)
        return self.embedder.encode(inputs)


def _hidden_size(model: str) -> int:
    from pathmllm.models.tiny import PRESETS

    if model in PRESETS:
        return 64
    from pathmllm.models.backbone import resolve_checkpoint

    cfg = json.loads((resolve_checkpoint(model) / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    return int(text["hidden_size"])


def _dynamic(model: str) -> tuple[EncoderSpec, Any]:
    spec = EncoderSpec(f"mllm:{model}", "mllm", _hidden_size(model), input_size=224, mpp=None,
                       needs_weights=False, architecture="MLLM4PUE image prompt, last-token state",
                       description="universal MLLM embedder (texts and images in one space)")

    def build(spec: EncoderSpec, _: Path | None) -> PatchEncoder:
        from pathmllm.models.embedder import load_embedder

        return MLLMPatchEncoder(spec, load_embedder(model, device="cpu", dtype="float32"))

    return spec, build


register_dynamic("mllm", _dynamic)
