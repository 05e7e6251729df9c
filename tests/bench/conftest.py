"""Fixtures of the benchmark tests: one tiny VLM embedder per session, and a private bench cache
(decompressed ``.h5.gz`` files go there) for every test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_vlm() -> Any:
    """``tiny-qwen2-vl`` on CPU (random weights, 64-d): loaded once for all benchmark tests."""
    from pathmllm.models.embedder import load_embedder

    return load_embedder("tiny-qwen2-vl", device="cpu")


@pytest.fixture(autouse=True)
def _private_bench_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write to ~/.cache from a test (PCam's .h5.gz files are decompressed under the bench cache)."""
    cache = tmp_path_factory.mktemp("bench-cache")
    monkeypatch.setenv("PATHMLLM_BENCH_CACHE", str(cache))
    return cache
