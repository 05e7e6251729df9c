"""Deterministic stand-in embedders for fast task, cache and runner tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from pathmllm.models.embedder import ImageOnlyModelError


def _unit(seed_text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def image_key(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return hashlib.sha256(image.tobytes()).hexdigest()
    with Image.open(image) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


class FakeEmbedder:
    """Vectors from hashes of the pixels / the text; ``links`` maps text -> image keys whose vector
    it copies (a perfect model for those pairs). Counts inputs embedded per kind."""

    def __init__(self, dim: int = 8, name: str = "fake", text_dim: int | None = None, image_only: bool = False) -> None:
        self.dim, self.name, self.text_dim, self.image_only = dim, name, text_dim or dim, image_only
        self.calls = {"image": 0, "text": 0, "pair": 0}
        self.text_to: dict[str, str] = {}
        self.fail_after: int | None = None

    def _image(self, image: Any) -> np.ndarray:
        return _unit("img" + image_key(image), self.dim)

    def _text(self, text: str) -> np.ndarray:
        return _unit("img" + self.text_to[text], self.text_dim) if text in self.text_to else _unit("txt" + text, self.text_dim)

    def _run(self, kind: str, items: Sequence[Any], fn: Callable[[Any], np.ndarray],
             progress: Callable[[int], None] | None) -> np.ndarray:
        if self.fail_after is not None and self.calls[kind] >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls[kind] += len(items)
        if progress is not None:
            progress(len(items))
        return np.stack([fn(x) for x in items]) if items else np.zeros((0, self.dim), np.float32)

    def embed_images(self, images: Sequence[Any], batch_size: int | None = None, progress: Any = None) -> np.ndarray:
        return self._run("image", list(images), self._image, progress)

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None, progress: Any = None) -> np.ndarray:
        if self.image_only:
            raise ImageOnlyModelError(f"{self.name} is an image-only patch encoder: it cannot embed text")
        return self._run("text", list(texts), self._text, progress)

    def embed_pairs(self, images: Sequence[Any], texts: Sequence[str], batch_size: int | None = None,
                    progress: Any = None) -> np.ndarray:
        pairs = list(zip(images, texts))

        def pair(p: tuple[Any, str]) -> np.ndarray:
            return _unit("pair" + image_key(p[0]) + p[1], self.dim)

        return self._run("pair", pairs, pair, progress)
