"""pathmllm: multimodal large language models for computational pathology.

The public API is imported lazily, so ``import pathmllm`` (and ``pathmllm --help``) stay fast::

    import pathmllm
    slide = pathmllm.open_slide("slide.svs")
    result = pathmllm.tile_slide("slide.svs", "out/")
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: public name -> module that defines it
_LAZY = {
    "Slide": "pathmllm.wsi.reader",
    "open_slide": "pathmllm.wsi.reader",
    "SlideStore": "pathmllm.wsi.store",
    "TilingConfig": "pathmllm.wsi.tiling",
    "TissueConfig": "pathmllm.wsi.tissue",
    "detect_tissue": "pathmllm.wsi.tissue",
    "tile_slide": "pathmllm.wsi.pipeline",
    "run_batch": "pathmllm.wsi.jobs",
    "find_slides": "pathmllm.wsi.discover",
    "export_patches": "pathmllm.wsi.export",
    "Registry": "pathmllm.utils.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pathmllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
