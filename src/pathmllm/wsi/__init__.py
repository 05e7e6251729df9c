"""Whole-slide images: reading, tissue detection, tiling, per-slide stores and batch jobs."""

from __future__ import annotations

from pathmllm.wsi.errors import (
    ImplausibleMppError,
    MissingMppError,
    SlideError,
    SlideOpenError,
    SlideReadError,
    SlideTooSmallError,
)
from pathmllm.wsi.reader import Slide, open_slide

__all__ = [
    "ImplausibleMppError",
    "MissingMppError",
    "Slide",
    "SlideError",
    "SlideOpenError",
    "SlideReadError",
    "SlideTooSmallError",
    "open_slide",
]
