"""CLIP-style encoder pairs behind the embedder protocol, for benchmarking CLIP baselines.

The image tower is the encoder registry's (``pathmllm models ls``: ``quiltnet-b32``, ``plip``,
``hf-clip``, ``open_clip:<arch>``, the tiny presets); the text tower comes from the same
checkpoint (open_clip's ``encode_text``; Hugging Face's ``CLIPTextModelWithProjection`` and
tokenizer from the same folder). Both towers must project to the same size, else
:class:`~pathmllm.bench.cache.EmbeddingDimensionError`. An (image, text) pair is embedded by late
fusion, the normalised sum of both unit vectors, the usual CLIP baseline for composed retrieval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pathmllm.bench.cache import EmbeddingDimensionError
from pathmllm.models.embedder import PatchEncoderEmbedder, check_texts
from pathmllm.utils.registry import Registry

#: name -> text tower kind ("open_clip" or "hf"); "open_clip:<arch>" resolves dynamically
CLIP_PAIRS: Registry[str] = Registry("CLIP pair")
for _name, _kind in (("tiny-open-clip", "open_clip"), ("quiltnet-b32", "open_clip"), ("tiny-hf-clip", "hf"),
                     ("plip", "hf"), ("hf-clip", "hf")):
    CLIP_PAIRS.add(_name, _kind)


def is_clip_pair(name: str) -> bool:
    return name in CLIP_PAIRS or name.startswith("open_clip:")


class TextTower(Protocol):
    def encode(self, texts: list[str]) -> Any:
        """``N`` texts -> ``(N, dim)`` float tensor (not normalised)."""


class OpenClipText:
    """``model.encode_text`` of an open_clip model with its tokenizer."""

    def __init__(self, model: Any, tokenize: Callable[[list[str]], Any]) -> None:
        self.model, self.tokenize = model, tokenize

    def encode(self, texts: list[str]) -> Any:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenize(texts).to(device))


class HFClipText:
    """``CLIPTextModelWithProjection(...).text_embeds`` with a tokenizer returning tensors."""

    def __init__(self, model: Any, tokenize: Callable[[list[str]], dict[str, Any]]) -> None:
        self.model, self.tokenize = model, tokenize

    def encode(self, texts: list[str]) -> Any:
        device = next(self.model.parameters()).device
        return self.model(**{k: v.to(device) for k, v in self.tokenize(texts).items()}).text_embeds


class ClipPairEmbedder(PatchEncoderEmbedder):
    """Image tower + text tower of one CLIP-style model as an embedder (``embed_images``,
    ``embed_texts``, ``embed_pairs``, ``dim``, ``name``)."""

    def __init__(self, encoder: Any, text: TextTower, *, name: str | None = None, batch_size: int = 64) -> None:
        import torch

        self.encoder = encoder.eval()
        self.text_tower = text
        self.batch_size = batch_size
        self._name = name or encoder.name
        side = encoder.spec.input_size
        device = next(iter(encoder.buffers())).device
        with torch.inference_mode():
            image_dim = encoder(encoder.preprocess(np.zeros((1, side, side, 3), np.uint8)).to(device)).shape[-1]
            text_dim = text.encode(["a"]).shape[-1]
        if image_dim != text_dim:
            raise EmbeddingDimensionError(
                f"{self._name}: the image tower gives {image_dim}-d vectors and the text tower {text_dim}-d; they "
                "are not one embedding space. Load both towers from the same CLIP checkpoint.")
        self._dim = int(image_dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def name(self) -> str:
        return self._name

    def fingerprint(self) -> dict[str, Any]:
        return {"text_tower": type(self.text_tower).__name__, "pair_fusion": "normalised sum"}

    def embed_texts(self, texts: Sequence[str], *, batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        texts = check_texts(texts)
        out = []
        bs = batch_size or self.batch_size
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            with torch.inference_mode():
                vecs = self.text_tower.encode(chunk)
            out.append(torch.nn.functional.normalize(vecs.float(), dim=-1).cpu().numpy())
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_pairs(self, images: Sequence[Any], texts: Sequence[str], *, batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Late fusion: ``normalise(image_vector + text_vector)``."""
        images, texts = list(images), list(texts)
        if len(images) != len(texts):
            raise ValueError(f"embed_pairs needs as many texts as images: {len(images)} images, {len(texts)} texts")
        fused = self.embed_images(images, batch_size=batch_size) + self.embed_texts(texts, batch_size=batch_size)
        if progress is not None:
            progress(len(images))
        return (fused / np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ---- building pairs from the encoder registry --------------------------------------------
def _fold_tokens(tokens: Any, vocab: int) -> Any:
    """Fit CLIP BPE ids into a tiny vocabulary, keeping end-of-text the largest id (open_clip
    pools the text at the argmax id). For the random tiny preset only."""
    import torch

    eot = tokens.max(dim=1, keepdim=True).values
    return torch.where(tokens == eot, vocab - 1, tokens % (vocab - 1))


def _open_clip_text(model: Any, arch: str | None) -> OpenClipText:
    import open_clip

    if arch is None:  # the tiny preset
        ctx, vocab = int(model.context_length), int(model.vocab_size)
        return OpenClipText(model, lambda texts: _fold_tokens(open_clip.tokenize(texts, context_length=ctx), vocab))
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"open_clip {arch}: cannot build its tokenizer offline ({exc})") from None
    return OpenClipText(model, tokenizer)


def _tiny_hf_text() -> HFClipText:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
                         bos_token_id=1, eos_token_id=999, pad_token_id=0)
    model = CLIPTextModelWithProjection(cfg).eval()

    def tokenize(texts: list[str]) -> dict[str, Any]:
        rows = [[1 + b % 997 for b in t.encode("utf-8")][:15] + [999] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]).long()}

    return HFClipText(model, tokenize)


def _hf_text(folder: Path) -> HFClipText:
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    try:
        model = CLIPTextModelWithProjection.from_pretrained(str(folder), local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: cannot load a CLIP text tower and tokenizer from it ({exc}); it must be a "
                         "full CLIP folder (config.json with text_config, weights, tokenizer files)") from None
    return HFClipText(model, lambda texts: dict(tok(texts, padding=True, truncation=True, return_tensors="pt")))


def load_clip_pair(name: str, weights: str | None = None, device: str = "cpu", batch_size: int = 64) -> ClipPairEmbedder:
    """Both towers of a registered CLIP-style model (``tiny-open-clip``, ``quiltnet-b32``,
    ``open_clip:<arch>``, ``tiny-hf-clip``, ``plip``, ``hf-clip``) from its local weights."""
    from pathmllm.encoders.registry import build_encoder, encoder_spec
    from pathmllm.encoders.weights import find_weights
    from pathmllm.models.backbone import resolve_device

    if not is_clip_pair(name):
        raise KeyError(f"{name!r} is not a CLIP-style pair; known: {', '.join(CLIP_PAIRS.names())}, open_clip:<arch>")
    device = resolve_device(device)
    spec, _ = encoder_spec(name)
    encoder = build_encoder(name, weights=weights, device=device)
    if spec.family == "open_clip":
        arch = None if not spec.needs_weights else (name.partition(":")[2] if name.startswith("open_clip:")
                                                    else spec.architecture.split()[-1])
        text: TextTower = _open_clip_text(encoder.model, arch)
    else:
        path = find_weights(spec.name, weights) if spec.needs_weights else None
        text = _tiny_hf_text() if path is None else _hf_text(path if path.is_dir() else path.parent)
        text.model.to(device)  # type: ignore[attr-defined]
    return ClipPairEmbedder(encoder, text, name=name, batch_size=batch_size)
