"""The encoder registry, building encoders by name, and what ``pathmllm models ls`` shows."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pathmllm.encoders.base import EncoderSpec, PatchEncoder
from pathmllm.encoders.weights import find_weights, require_weights
from pathmllm.utils.registry import Registry

log = logging.getLogger(__name__)

Builder = Callable[[EncoderSpec, "Path | None"], PatchEncoder]
ENCODERS: Registry[Builder] = Registry("encoder")

#: dynamic names: "timm:<arch>", "hf:<folder>", "open_clip:<arch>"
_DYNAMIC: dict[str, Callable[[str], tuple[EncoderSpec, Builder]]] = {}


def register_encoder(spec: EncoderSpec) -> Callable[[Builder], Builder]:
    """Register a builder ``(spec, weights_path | None) -> PatchEncoder`` under ``spec.name``."""

    def decorator(fn: Builder) -> Builder:
        ENCODERS.add(spec.name, fn, spec=spec)
        return fn

    return decorator


def register_dynamic(prefix: str, resolve: Callable[[str], tuple[EncoderSpec, Builder]]) -> None:
    _DYNAMIC[prefix] = resolve


def load_builtin_encoders() -> None:
    from pathmllm.encoders import clip_models, handcrafted, hf_models, mllm, timm_models  # noqa: F401


def encoder_spec(name: str) -> tuple[EncoderSpec, Builder]:
    load_builtin_encoders()
    if ":" in name:
        prefix, _, rest = name.partition(":")
        if prefix not in _DYNAMIC:
            raise KeyError(f"unknown encoder prefix {prefix!r}; use one of {', '.join(sorted(_DYNAMIC))}")
        return _DYNAMIC[prefix](rest)
    entry = ENCODERS.entry(name)
    return entry.metadata["spec"], entry.obj


def build_encoder(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    allow_random: bool = False,
) -> PatchEncoder:
    """Build a registered encoder with its local weights, in eval mode on ``device``.

    ``allow_random=True`` builds the real architecture with random weights when no weights
    are found (for benchmarks: the speed is the same as a trained model's).
    """
    spec, builder = encoder_spec(name)
    path: Path | None = None
    if spec.needs_weights:
        path = find_weights(spec.name, weights)
        if path is None and not allow_random:
            path = require_weights(spec.name, weights, spec.weights_hint)
        if path is None:
            log.warning("encoder %s: no weights found, using RANDOM weights (benchmarking only)", name)
    elif weights is not None:
        path = find_weights(spec.name, weights)
    torch.manual_seed(0)  # random presets are the same every time
    enc = builder(spec, path)
    return enc.eval().to(device)


def list_encoders() -> list[dict[str, Any]]:
    """Every registered encoder with its metadata and whether weights are available locally."""
    load_builtin_encoders()
    rows = []
    for entry in ENCODERS:
        spec: EncoderSpec = entry.metadata["spec"]
        try:
            path = find_weights(spec.name) if spec.needs_weights else None
            status = str(path) if path else ("not needed" if not spec.needs_weights else "missing")
        except FileNotFoundError as exc:
            status = f"broken: {exc}"
        rows.append({**spec.to_dict(), "weights": status})
    return rows
