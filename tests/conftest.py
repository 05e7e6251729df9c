"""Shared fixtures: the real data in ../shared/data, and small slides made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import tissue_image, write_pyramid

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PATHMLLM_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_TOOLS = SHARED_DATA.parent / "tools" / "clients"
EXAMPLE_SLIDE = REPO / "examples" / "CMU-1-Small-Region.svs"


def shared(*parts: str) -> Path:
    """A path in ../shared/data; the test skips (with the reason) when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (the shared data folder sits beside the checkout in CI)")
    return p


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None and "gpu" in {m.name for i in items for m in i.iter_markers()}:
        import torch

        has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session")
def example_slide() -> Path:
    """The bundled CC0 example slide (Aperio SVS, 2220x2967, 0.499 µm/px)."""
    assert EXAMPLE_SLIDE.exists(), "examples/CMU-1-Small-Region.svs is part of the repository"
    return EXAMPLE_SLIDE


@pytest.fixture(scope="session")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level generic TIFF (1, 4, 16) at 0.25 µm/px, 2048x1536, with two tissue blobs."""
    path = tmp_path_factory.mktemp("slides") / "pyramid.tiff"
    return write_pyramid(path, tissue_image(2048, 1536), mpp=0.25, downsamples=(1, 4, 16))


@pytest.fixture(scope="session")
def blank_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A white slide at 0.5 µm/px: no tissue."""
    import numpy as np

    path = tmp_path_factory.mktemp("slides") / "blank.tiff"
    return write_pyramid(path, np.full((1024, 1024, 3), 246, dtype="uint8"), mpp=0.5, downsamples=(1, 4))
