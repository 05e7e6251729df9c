"""Lazy imports of optional dependencies, with an install hint that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

#: module name -> (pip distribution, pathmllm extra)
_HINTS: dict[str, tuple[str, str]] = {
    "openslide": ("openslide-python openslide-bin", "wsi"),
    "tiffslide": ("tiffslide", "wsi"),
    "wsidicom": ("wsidicom", "wsi"),
    "pydicom": ("pydicom", "wsi"),
    "imagecodecs": ("imagecodecs", "wsi"),
    "ray": ("ray", "ray"),
    "torch": ("torch torchvision", "train"),
    "transformers": ("transformers", "train"),
    "fastapi": ("fastapi uvicorn", "serve"),
    "sklearn": ("scikit-learn", "bench"),
    "faiss": ("faiss-cpu", "index"),
    "pandas": ("pandas", "index"),
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def install_hint(module: str) -> str:
    dist, extra = _HINTS.get(module.split(".")[0], (module, "all"))
    return f'pip install "pathmllm[{extra}]"  (or: pip install {dist})'


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"{module} is needed{what} but is not installed ({exc}). Install it with: "
            f"{install_hint(module)}"
        ) from exc


def available(module: str) -> bool:
    """True when ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
