"""Does the universal embedder learn? tiny-qwen2-vl from random weights, LC25000 lung tiles
captioned by class name, zero-shot classification of tiles from held-out groups (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathmllm.train.embed import load_config, train
from tests.conftest import REPO, shared

pytestmark = [pytest.mark.data, pytest.mark.integration]


def test_zero_shot_balanced_accuracy_on_held_out_groups(tmp_path: Path) -> None:
    tiles = shared("tiles", "lc25000-lung")
    cfg = load_config(REPO / "configs" / "embed" / "lc25000.yaml",
                      [f"out={tmp_path / 'run'}", f"data.tiles={tiles}", "checkpoint_every=0"])
    result = train(cfg)
    history = result.metrics["history"]
    assert history[0]["step"] == 0 and history[0]["balanced_accuracy"] < 0.5  # random weights: near chance
    final = result.metrics["final"]
    assert final["n"] == 180  # 30 % of each class's 100 groups, 2 tiles each
    assert final["balanced_accuracy"] >= 0.85, history
    assert result.train_seconds < 5 * 60
    # the exported model gives the same zero-shot result through the public embedder
    from pathmllm.bench.zero_shot import zero_shot_eval
    from pathmllm.data.tile_classes import read_groups, split_by_group
    from pathmllm.models.embedder import load_embedder

    _, val = split_by_group(read_groups(tiles), cfg.data.val_fraction, cfg.data.split_seed)
    again = zero_shot_eval(load_embedder(result.model_dir, device="cpu"), [str(t.path) for t in val],
                           [t.label for t in val], cfg.data.class_names)
    assert again["balanced_accuracy"] == pytest.approx(final["balanced_accuracy"], abs=0.01)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in log if "loss" in x]
    assert losses[-1] < losses[0]
