"""Does the grounding model learn? MedPLIB's three stages from tiny presets on the shared
Kvasir-SEG images; Dice and region questions on held-out images (integration).

The driver is ``benchmarks/ground_kvasir.py`` (the same run, with the numbers in docs/grounding.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, shared

pytestmark = [pytest.mark.data, pytest.mark.integration]


def _driver():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("ground_kvasir", REPO / "benchmarks" / "ground_kvasir.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_stages_segment_and_answer_on_held_out_images(tmp_path: Path) -> None:
    kvasir = shared("grounding", "kvasir-seg")
    results = _driver().main(["--out", str(tmp_path), "--kvasir", str(kvasir), "--final-eval-only"])
    vl, seg, moe = results["vl"], results["seg"], results["moe"]
    assert [vl["stage"], seg["stage"], moe["stage"]] == ["vl", "seg", "moe"]
    # the three stages together train in at most 10 minutes on this CPU
    assert results["train_seconds"] <= 600

    ev = moe["eval"]
    assert ev["segmentation"]["n"] == 120  # every held-out image (30 % of 400)
    # held-out Dice of the final (MoE) model: far above always answering the mean training mask
    assert ev["segmentation"]["mDice"] >= 0.6, ev["segmentation"]
    assert ev["segmentation"]["mDice"] >= results["mean_mask_baseline"]["mDice"] + 0.15
    assert ev["seg_emitted"] >= 0.95
    # "is there a polyp in this region?" on the polyp's box vs a background box
    assert ev["closed"]["n"] >= 150 and ev["closed"]["accuracy"] >= 0.85, ev["closed"]

    # the MoE stage logged routing statistics per token type and modality
    routing = results["moe_routing_last"]
    assert {"image", "region", "seg", "answer_text", "prompt_text", "modality:endoscopy"} <= set(routing)
    for per_layer in routing["image"].values():
        assert abs(sum(per_layer) - 1.0) < 1e-6
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["moe_mDice"] == ev["segmentation"]["mDice"]
