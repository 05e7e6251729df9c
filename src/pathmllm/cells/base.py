"""The one interface every nucleus segmentation backend implements.

A backend turns an RGB image at a known µm/px into an instance label image (0 = background,
1..N = nuclei). Callers (the slide runner, metrics, the CLI) only use this interface, so a
new backend (CellViT, HoVer-Net with local weights) is one registered class.

    seg = build_segmenter("watershed")
    labels = seg.segment(rgb, mpp=0.25)      # (H, W) int32
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from pathmllm.utils.registry import Registry

SEGMENTERS: Registry[type[NucleusSegmenter]] = Registry("nucleus segmenter")


class NucleusSegmenter(ABC):
    """Segment nuclei. Subclasses register with ``@SEGMENTERS.register(name, ...)``."""

    name: str = ""

    @abstractmethod
    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Instance labels ``(H, W)`` int32 for an RGB uint8 image ``(H, W, 3)`` at ``mpp`` µm/px.

        Returns all zeros (not an error) when there are no nuclei, e.g. on background.
        """

    def segment_batch(self, images: list[np.ndarray], mpp: float) -> list[np.ndarray]:
        """Several images at once; backends with a network override this to batch."""
        return [self.segment(im, mpp) for im in images]


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an input image; a wrong channel count is a clear ``ValueError``."""
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        raise ValueError(
            f"expected an RGB image (H, W, 3), got a single-channel {arr.shape} image; "
            "convert it with np.repeat(img[..., None], 3, axis=2) if it is a grey H&E scan"
        )
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = (arr * 255).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def load_builtin_backends(name: str | None = None) -> None:
    """Import the built-in backends so they register; stop as soon as ``name`` is there.

    The network backend imports torch (a second or more), so a watershed-only run never pays it.
    """
    from pathmllm.cells import watershed  # noqa: F401

    if name is not None and name in SEGMENTERS:
        return
    try:
        from pathmllm.cells import network  # noqa: F401
    except ImportError as exc:  # torch missing: the network backend is simply not offered
        import logging

        logging.getLogger(__name__).debug("network nucleus backend unavailable: %s", exc)


def segmenter_class(name: str) -> type[NucleusSegmenter]:
    """A registered backend by name, or any class by import path ``"package.module:Class"``.

    The import-path form is how a backend of your own reaches worker processes: they import
    the module themselves, so the class need not be registered in the parent.
    """
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load cell backend {name!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, NucleusSegmenter)):
            raise ValueError(f"{name!r} is not a NucleusSegmenter subclass")
        return cls
    if name not in SEGMENTERS:
        load_builtin_backends(name)
    if name not in SEGMENTERS:
        raise ValueError(
            f"unknown cell backend {name!r}; known: {', '.join(SEGMENTERS.names())} "
            "(or give a class as 'package.module:Class')"
        )
    return SEGMENTERS.get(name)


def build_segmenter(name: str, **kwargs: Any) -> NucleusSegmenter:
    """Instantiate a backend (see :func:`segmenter_class`) with its keyword arguments."""
    return segmenter_class(name)(**kwargs)
