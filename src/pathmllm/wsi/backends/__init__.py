"""Slide reading backends behind :class:`pathmllm.wsi.Slide`.

Each backend module registers one class in :data:`BACKENDS`; the order of
:data:`AUTO_ORDER` decides which is tried first for a file extension.
"""

from __future__ import annotations

from pathmllm.wsi.backends.base import BACKENDS, SlideBackend, auto_order

__all__ = ["BACKENDS", "SlideBackend", "auto_order", "load_all"]


def load_all() -> None:
    """Import every backend module so that it registers itself (cheap: libraries load lazily)."""
    from pathmllm.wsi.backends import dicom, openslide_backend, pil, tiff  # noqa: F401
