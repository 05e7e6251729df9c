"""What every patch encoder is: a torch module from images to vectors, plus its metadata.

    enc = build_encoder("uni", weights="/models/uni/pytorch_model.bin")
    x = enc.preprocess(batch_uint8)          # (B, H, W, 3) uint8 -> (B, 3, S, S) float, normalised
    features = enc(x)                        # (B, embed_dim)
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Family = Literal["timm", "open_clip", "hf", "handcrafted", "mllm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EncoderSpec:
    """Metadata of a registered encoder (shown by ``pathmllm models ls``)."""

    name: str
    family: Family
    embed_dim: int
    input_size: int = 224
    """Side in px the model is fed (patches of another size are resized)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    mpp: float | None = 0.5
    """µm/px the model was trained at (None: resolution-agnostic)."""
    licence: str = "unknown"
    needs_weights: bool = True
    """False for encoders with no learned weights or tiny random test presets."""
    architecture: str = ""
    weights_hint: str = ""
    """What file or folder to put where, e.g. the Hugging Face repo the weights come from."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PatchEncoder(nn.Module, metaclass=ABCMeta):
    """``forward((B, 3, S, S) float) -> (B, embed_dim)``; :meth:`preprocess` builds the input."""

    def __init__(self, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.register_buffer("_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def name(self) -> str:
        return self.spec.name

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, S, S)`` float32, resized (antialiased) and normalised."""
        x = to_chw_uint8(images)
        return normalise(x, self.spec, self._mean, self._std)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed float -> ``(B, embed_dim)`` float."""


def to_chw_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` or ``(H, W, 3)`` uint8 (numpy or torch) -> ``(B, 3, H, W)`` uint8 tensor."""
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images (B, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return x.permute(0, 3, 1, 2)


def normalise(x: torch.Tensor, spec: EncoderSpec, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, resized to ``spec.input_size``, ImageNet/CLIP-normalised."""
    x = x.to(device=mean.device).float().div_(255.0)
    s = spec.input_size
    if x.shape[-2:] != (s, s):
        x = torch.nn.functional.interpolate(x, size=(s, s), mode=spec.interpolation, antialias=True,
                                            align_corners=False).clamp_(0, 1)
    return (x - mean) / std
