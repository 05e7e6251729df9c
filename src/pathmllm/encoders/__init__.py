"""Patch encoders: a registry of vision encoders that load local weights (never downloaded).

    from pathmllm.encoders import build_encoder, list_encoders
    enc = build_encoder("uni", weights="/models/uni")     # or $PATHMLLM_WEIGHTS/weights.yaml
    feats = enc(enc.preprocess(batch_uint8))              # (B, 1024)
"""

from __future__ import annotations

from pathmllm.encoders.base import EncoderSpec, PatchEncoder
from pathmllm.encoders.registry import (
    ENCODERS,
    build_encoder,
    encoder_spec,
    list_encoders,
    register_encoder,
)
from pathmllm.encoders.weights import WeightsMismatchError, WeightsNotFoundError

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "PatchEncoder",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "build_encoder",
    "encoder_spec",
    "list_encoders",
    "register_encoder",
]
