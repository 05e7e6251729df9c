"""Cells: nucleus segmentation backends, annotations, metrics, per-cell features, slide runs."""

from __future__ import annotations

from pathmllm.cells.base import SEGMENTERS, NucleusSegmenter, build_segmenter

__all__ = ["SEGMENTERS", "NucleusSegmenter", "build_segmenter"]
