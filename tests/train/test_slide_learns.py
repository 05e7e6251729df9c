"""Does the hierarchical slide LLM learn? Three stages from tiny presets on virtual slides of real
LC25000 tissue; diagnosis questions on virtual slides built from held-out tile groups (integration).

The driver is ``benchmarks/slide_virtual.py`` (the same run, with the numbers in docs/slide-llm.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, shared

pytestmark = [pytest.mark.data, pytest.mark.integration]


def _driver():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("slide_virtual", REPO / "benchmarks" / "slide_virtual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_stages_learn_the_diagnosis_on_held_out_slides(tmp_path: Path) -> None:
    shared("tiles", "lc25000-lung")
    results = _driver().main(["--out", str(tmp_path), "--train-slides", "36", "--test-slides", "15"])
    build = results["build"]
    assert build["train_slides"] == 36 and build["test_slides"] == 15
    s1, s2, s3 = results["stage1"], results["stage2"], results["stage3"]
    assert [s1["stage"], s2["stage"], s3["stage"]] == [1, 2, 3]
    # the three stages together train in at most 10 minutes on this CPU
    assert s1["train_seconds"] + s2["train_seconds"] + s3["train_seconds"] <= 600

    # stage 1 learns its contrastive objective (first vs last logged step)
    log1 = [json.loads(x) for x in (tmp_path / "stage1" / "log.jsonl").read_text().splitlines()]
    assert log1[-1]["contrastive"] < 0.5 * log1[0]["contrastive"], (log1[0], log1[-1])

    val = s3["val"]
    assert val["n_closed"] == 15
    assert val["closed_accuracy"] >= 0.8, val  # chance 1/3
    assert val["open"]["rougeL"] > 0.3, val  # reports follow the template
    ev = results["evidence"]
    assert ev["n"] == 15 and ev["diagnosis_accuracy_via_ask"] >= 0.8, ev
    # the top evidence patches lie on tiles of the answered class more often than that class's
    # share of the tissue (chance)
    assert ev["top3_patches_on_answered_class"] >= ev["chance_answered_class_share_of_tissue"] + 0.1, ev
    assert (tmp_path / "heatmaps" / "test-000.png").is_file()
