"""MLLM4PUE universal embedder: images, texts and image+text pairs in one space.

The idea (MLLM4PUE, arXiv 2502.07221, after E5-V): wrap the input in a prompt that asks the
model to "summarize above image in one word", run the multimodal LLM, and take the final hidden
state of the last prompt token as the embedding. The image, the text and the image-with-text
prompts all end the same way, so their vectors land in one space. Optionally a dedicated
embedding token (``<emb>``, as the authors' successor model adds) is appended and read instead.

Vectors are L2-normalised float32. Batches are bucketed by length; the pooled position is the
last non-padding token, so left and right padding give the same vector as a single-example
forward (tested).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pathmllm.models.backbone import Backbone, load_backbone

log = logging.getLogger(__name__)

ImageLike = "str | os.PathLike[str] | Any"
Kind = Literal["image", "text", "pair"]


class ImageReadError(ValueError):
    """An image file that cannot be read (missing, zero bytes, not an image)."""


class ImageOnlyModelError(ValueError):
    """Text asked of a model that only embeds images."""


@dataclass
class PromptTemplates:
    """Prompts of the three input kinds; ``<image>`` marks the image, ``<sent>`` the text."""

    image: str = "<image>\nSummarize above image in one word:"
    """Prompt for an image alone (MLLM4PUE / E5-V)."""
    text: str = "<sent>\nSummarize above sentence in one word:"
    """Prompt for a text alone."""
    pair: str = "<image>\n<sent>\nSummarize above image and sentence in one word:"
    """Prompt for an image with a text."""
    embed_token: str | None = None
    """If set (e.g. ``<emb>``), appended after the prompt; its hidden state is the embedding."""
    use_chat_template: bool = True
    """Wrap the prompt as a user turn with the checkpoint's chat template and generation prompt."""


def load_image(image: Any) -> Any:
    """A path, PIL image or ``(H, W, 3)`` uint8 array -> RGB PIL image; clear error otherwise."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ImageReadError(f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        return Image.fromarray(image)
    path = Path(image)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-copy or remove it")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from None


def check_texts(texts: Sequence[str]) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"text {i} is empty; an empty text has no meaning to embed: drop it or fill it in")
        out.append(t)
    return out


def last_token_pool(hidden: Any, attention_mask: Any) -> Any:
    """``(batch, seq, hidden)`` -> ``(batch, hidden)`` at each row's last non-padding position.

    Works for left and right padding alike: the index is that of the last 1 in the mask.
    """
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _nn_module() -> type:
    import torch

    return torch.nn.Module


class EmbeddingModel(_nn_module()):  # type: ignore[misc]
    """``nn.Module`` view of a VLM as an embedder: ``forward(**processor_output) -> (batch, hidden)``.

    Runs the base model (no language-model head: the logits are never needed) and pools the
    final hidden state at the last non-padding token. Training wraps *this* module with
    DDP / FSDP so every encoder forward goes through the wrapper.
    """

    def __init__(self, vlm: Any) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, normalize: bool = True, **inputs: Any) -> Any:
        import torch

        out = self.vlm.model(**inputs, use_cache=False)
        pooled = last_token_pool(out.last_hidden_state, inputs["attention_mask"])
        if normalize:
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled


class UniversalEmbedder:
    """Embed images, texts and image+text pairs with one VLM (MLLM4PUE).

    Args:
        backbone: a :class:`~pathmllm.models.backbone.Backbone` (see :func:`load_embedder`).
        templates: the prompts; defaults are MLLM4PUE's.
        batch_size: inputs per forward pass.
        padding_side: ``left`` or ``right``; the vectors do not depend on it.
    """

    def __init__(self, backbone: Backbone, templates: PromptTemplates | None = None, *, batch_size: int = 16,
                 padding_side: Literal["left", "right"] = "left") -> None:
        self.backbone = backbone
        self.templates = templates or PromptTemplates()
        self.batch_size = batch_size
        self.padding_side = padding_side
        if self.templates.embed_token:
            backbone.add_tokens([self.templates.embed_token])
        self.module = EmbeddingModel(backbone.model)

    @property
    def dim(self) -> int:
        return self.backbone.hidden_size

    @property
    def name(self) -> str:
        return self.backbone.name

    # ---- prompts and inputs -------------------------------------------------------------
    def prompt(self, kind: Kind, text: str | None = None) -> str:
        """The full prompt string of one input (chat template applied, embedding token appended)."""
        template = getattr(self.templates, kind)
        body = template.replace("<sent>", text or "")
        pieces = body.split("<image>")
        if kind in ("image", "pair") and len(pieces) != 2:
            raise ValueError(f"the {kind} template must contain <image> exactly once: {template!r}")
        content: list[dict[str, str]] = []
        for i, piece in enumerate(pieces):
            if i > 0:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
        processor = self.backbone.processor
        if self.templates.use_chat_template:
            prompt = processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False)
        else:
            image_marker = getattr(processor, "image_token", "<image>")
            prompt = "".join(c["text"] if c["type"] == "text" else image_marker for c in content)
        if self.templates.embed_token:
            prompt += self.templates.embed_token
        return prompt

    def build_inputs(self, kind: Kind, images: Sequence[Any] | None = None,
                     texts: Sequence[str] | None = None) -> Any:
        """Processor output for one batch of one kind (``input_ids``, ``attention_mask``, pixels)."""
        n = len(images) if images is not None else len(texts or [])
        return self.build_mixed_inputs([(kind, images[i] if images is not None else None,
                                         texts[i] if texts is not None else None) for i in range(n)])

    def build_mixed_inputs(self, items: Sequence[tuple[Kind, Any, str | None]]) -> Any:
        """Processor output for ``(kind, image or None, text or None)`` items of any kinds at once
        (text-only and image prompts share one padded batch; images are passed in order)."""
        prompts = [self.prompt(kind, text) for kind, _, text in items]
        pil = [load_image(image) for kind, image, _ in items if kind != "text"]
        return self.backbone.processor(text=prompts, images=pil or None, padding=True, return_tensors="pt",
                                       padding_side=self.padding_side)

    def encode(self, inputs: Any, *, normalize: bool = True) -> Any:
        """Forward one processed batch -> ``(batch, hidden)`` vectors (keeps the autograd graph)."""
        return self.module(**self.to_device(inputs), normalize=normalize)

    def to_device(self, inputs: Any) -> dict[str, Any]:
        """Tensors of a processor output on the model's device; floating ones in its dtype."""
        import torch

        device, dtype = self.backbone.device, self.backbone.dtype
        return {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
                for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    # ---- public API ---------------------------------------------------------------------
    def embed_images(self, images: Sequence[Any], **kwargs: Any) -> np.ndarray:
        """``N`` images (paths, PIL, uint8 arrays) -> ``(N, dim)`` float32, unit norm."""
        return self._embed("image", list(images), None, **kwargs)

    def embed_texts(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """``N`` texts -> ``(N, dim)`` float32, unit norm."""
        return self._embed("text", None, check_texts(texts), **kwargs)

    def embed_pairs(self, images: Sequence[Any], texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """``N`` (image, text) pairs -> ``(N, dim)`` float32, unit norm."""
        images, texts = list(images), check_texts(texts)
        if len(images) != len(texts):
            raise ValueError(f"embed_pairs needs as many texts as images: {len(images)} images, {len(texts)} texts")
        return self._embed("pair", images, texts, **kwargs)

    def _embed(self, kind: Kind, images: list[Any] | None, texts: list[str] | None, *,
               batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        n = len(images) if images is not None else len(texts or [])
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        if images is not None:
            images = [load_image(im) for im in images]
        bs = batch_size or self.batch_size
        for idx in self._buckets(kind, images, texts, bs):
            inputs = self.build_inputs(kind, [images[i] for i in idx] if images is not None else None,
                                       [texts[i] for i in idx] if texts is not None else None)
            with torch.inference_mode():
                out[idx] = self.encode(inputs).cpu().numpy()
            if progress is not None:
                progress(len(idx))
        return out

    def _buckets(self, kind: Kind, images: list[Any] | None, texts: list[str] | None,
                 batch_size: int) -> Iterator[list[int]]:
        """Indices in batches of similar length (text tokens, then image pixels), longest first."""
        n = len(images) if images is not None else len(texts or [])
        tok = self.backbone.tokenizer
        text_len = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts] if texts else [0] * n
        pixels = [im.width * im.height for im in images] if images is not None else [0] * n
        order = sorted(range(n), key=lambda i: (pixels[i], text_len[i]), reverse=True)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


class PatchEncoderEmbedder:
    """An image-only patch encoder (``pathmllm models ls``) behind the embedder interface."""

    def __init__(self, name: str, weights: str | None = None, device: str = "auto", batch_size: int = 64) -> None:
        from pathmllm.encoders.registry import build_encoder
        from pathmllm.models.backbone import resolve_device

        self.encoder = build_encoder(name, weights=weights, device=resolve_device(device))
        self.encoder.eval()
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def name(self) -> str:
        return self.encoder.name

    def embed_images(self, images: Sequence[Any], *, batch_size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        out = []
        bs = batch_size or self.batch_size
        device = next(iter(self.encoder.buffers())).device
        for start in range(0, len(images), bs):
            chunk = [np.array(load_image(im)) for im in images[start:start + bs]]
            sizes = {c.shape for c in chunk}
            batch = np.stack(chunk) if len(sizes) == 1 else None
            with torch.inference_mode():
                if batch is None:
                    vecs = torch.cat([self.encoder(self.encoder.preprocess(c[None]).to(device)) for c in chunk])
                else:
                    vecs = self.encoder(self.encoder.preprocess(batch).to(device))
            out.append(torch.nn.functional.normalize(vecs.float(), dim=-1).cpu().numpy())
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _text_error(self) -> ImageOnlyModelError:
        return ImageOnlyModelError(
            f"{self.name} is an image-only patch encoder: it cannot embed text. Use a vision-language "
            "checkpoint (Qwen2-VL, LLaVA … folder, or a tiny preset such as tiny-qwen2-vl) for texts and pairs.")

    def embed_texts(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        raise self._text_error()

    def embed_pairs(self, images: Sequence[Any], texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        raise self._text_error()


def load_embedder(model: str | os.PathLike[str], device: str = "auto", *, dtype: str = "auto",
                  templates: PromptTemplates | None = None, batch_size: int = 16,
                  weights: str | None = None) -> UniversalEmbedder | PatchEncoderEmbedder:
    """A universal embedder over a VLM (preset, folder, weights-table name), or an image-only
    patch encoder when ``model`` names one in the encoder registry."""
    from pathmllm.models.tiny import PRESETS

    name = str(model)
    if name not in PRESETS and not Path(name).expanduser().exists():
        from pathmllm.encoders.registry import encoder_spec

        try:
            encoder_spec(name)
        except KeyError:
            pass
        else:
            return PatchEncoderEmbedder(name, weights=weights, device=device)
    backbone = load_backbone(model, dtype=dtype, device=device)
    saved = Path(name).expanduser() / "pathmllm_embedder.json"
    if templates is None and saved.is_file():
        import json

        templates = PromptTemplates(**json.loads(saved.read_text())["templates"])
    return UniversalEmbedder(backbone, templates, batch_size=batch_size)
