"""Fixtures of the benchmark tests: one tiny VLM embedder per session."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_vlm() -> Any:
    """``tiny-qwen2-vl`` on CPU (random weights, 64-d): loaded once for all benchmark tests."""
    from pathmllm.models.embedder import load_embedder

    return load_embedder("tiny-qwen2-vl", device="cpu")
