"""Training recipes. Each sub-module is one recipe with a typed config, e.g.
:mod:`pathmllm.train.cells` (nucleus segmentation, ``pathmllm train cells``).

Nothing heavy is imported here; torch is imported by the recipe modules themselves.
"""

from __future__ import annotations
