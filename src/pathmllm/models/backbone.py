"""Load a Hugging Face vision-language model and its processor from a local folder, or a preset.

One loader serves the universal embedder, the slide model and the grounding model. Nothing is
downloaded: ``name_or_path`` is a tiny preset name (see :mod:`pathmllm.models.tiny`), a local
checkpoint folder, or a name in the local weights table (``$PATHMLLM_WEIGHTS/weights.yaml``,
shared with the patch encoders). The model class comes from ``AutoModelForImageTextToText`` and the
processor (with the checkpoint's own chat template) from ``AutoProcessor``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pathmllm.utils.optional import require

log = logging.getLogger(__name__)

#: model_type in config.json -> human name. These are the architectures whose processors,
#: chat templates and image-token handling are tested here.
SUPPORTED_FAMILIES: dict[str, str] = {
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "qwen3_vl": "Qwen3-VL",
    "llava": "LLaVA / LLaVA-1.5",
    "llava_next": "LLaVA-NeXT (LLaVA-1.6)",
}

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

DType = Literal["auto", "float32", "bfloat16", "float16"]


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture pathmllm does not support."""


class CheckpointError(FileNotFoundError):
    """A checkpoint folder that lacks something needed (config, weights, processor)."""


@dataclass
class Backbone:
    """A loaded VLM: ``model`` (an ``...ForConditionalGeneration``), its ``processor``, and facts."""

    model: Any
    processor: Any
    family: str
    name: str

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        text = getattr(config, "text_config", None) or config
        return int(text.hidden_size)

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Add special tokens (e.g. ``<emb>``) if absent, resizing the embeddings; returns their ids."""
        missing = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                              replace_extra_special_tokens=False)
            self.model.resize_token_embeddings(len(self.tokenizer))
        return [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def resolve_device(device: str = "auto") -> str:
    torch = require("torch", "models")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: DType | Any, device: str) -> Any:
    """``auto``: bfloat16 on a GPU that supports it, else float32."""
    torch = require("torch", "models")
    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def checkpoint_family(folder: Path) -> str:
    """Read ``model_type`` from ``folder/config.json``; raise if unsupported."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder "
                              "(save one with model.save_pretrained(folder)).")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type", "")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON ({exc}).") from None
    if model_type not in SUPPORTED_FAMILIES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_FAMILIES.items())
        raise UnsupportedModelError(
            f"{folder}: model_type {model_type!r} is not a supported vision-language architecture. "
            f"Supported: {supported}.")
    return model_type


def check_processor_files(folder: Path) -> None:
    """A checkpoint must carry its processor: image processor config and tokenizer files."""
    has_image = any((folder / f).is_file() for f in PROCESSOR_FILES)
    has_tokenizer = any((folder / f).is_file() for f in TOKENIZER_FILES)
    if not (has_image and has_tokenizer):
        missing = []
        if not has_image:
            missing.append(" or ".join(PROCESSOR_FILES))
        if not has_tokenizer:
            missing.append("tokenizer files (" + ", ".join(TOKENIZER_FILES) + ")")
        raise CheckpointError(
            f"{folder} has no processor: missing {'; '.join(missing)}. Copy them from the base model "
            "the checkpoint was trained from, or save them with processor.save_pretrained(folder).")


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder: the path itself, or a name in the local weights table."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a model is loaded from a checkpoint folder "
                              "(config.json, weights, processor files).")
    from pathmllm.encoders.weights import find_weights

    found = find_weights(str(name_or_path))
    if found is not None and found.is_dir():
        return found
    from pathmllm.models.tiny import PRESETS

    raise CheckpointError(
        f"model {str(name_or_path)!r} is neither a local checkpoint folder, a tiny preset "
        f"({', '.join(sorted(PRESETS))}) nor a name in $PATHMLLM_WEIGHTS/weights.yaml. "
        "pathmllm never downloads weights: download the checkpoint yourself and pass its folder.")


def load_backbone(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: DType | Any = "auto",
    device: str = "auto",
    attn_implementation: str | None = None,
) -> Backbone:
    """Load a supported VLM and its processor.

    Args:
        name_or_path: tiny preset name (``tiny-qwen2-vl``, ``tiny-llava`` …), a local checkpoint
            folder, or a name mapped in ``$PATHMLLM_WEIGHTS/weights.yaml``.
        dtype: ``auto`` (bfloat16 on a bf16-capable GPU, else float32) or an explicit dtype.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` …
        attn_implementation: passed to ``from_pretrained`` (``sdpa`` by default in transformers).
    """
    require("transformers", "models")
    from pathmllm.models.tiny import PRESETS, build_tiny

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = str(name_or_path)
    if name in PRESETS and not Path(name).exists():
        model, processor = build_tiny(name)
        family = PRESETS[name].family
        model = model.to(device=device, dtype=torch_dtype)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = resolve_checkpoint(name_or_path)
        family = checkpoint_family(folder)
        check_processor_files(folder)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
        except OSError as exc:
            raise CheckpointError(f"{folder}: could not load the weights ({exc}). Expected model.safetensors "
                                  "(or sharded model-0000x-of-0000y.safetensors with an index).") from None
        model = model.to(device)
        name = str(folder)
        log.info("loaded %s (%s) from %s", SUPPORTED_FAMILIES[family], type(model).__name__, folder)
    model.eval()
    if getattr(processor, "chat_template", None) is None:
        raise CheckpointError(f"{name}: the processor has no chat template (chat_template.jinja or "
                              "chat_template.json); copy it from the base model.")
    return Backbone(model=model, processor=processor, family=family, name=name)


def list_vlms() -> list[dict[str, Any]]:
    """Tiny presets and the weights-table entries that are supported VLM checkpoint folders."""
    from pathmllm.encoders.weights import weights_table
    from pathmllm.models.tiny import PRESETS

    rows: list[dict[str, Any]] = [
        {"name": p.name, "family": SUPPORTED_FAMILIES[p.family], "kind": "vlm", "weights": "built in (random)",
         "description": p.description} for p in PRESETS.values()]
    for name, path in sorted(weights_table().items()):
        if not (path / "config.json").is_file():
            continue
        try:
            family = checkpoint_family(path)
        except (CheckpointError, UnsupportedModelError):
            continue
        rows.append({"name": name, "family": SUPPORTED_FAMILIES[family], "kind": "vlm", "weights": str(path),
                     "description": "local checkpoint"})
    return rows
