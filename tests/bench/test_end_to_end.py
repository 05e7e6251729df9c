"""The benchmark end to end on the real shared tiles (LC25000 lung, NCT-CRC) with the tiny VLM,
through the Python API and the CLI (run, report, ls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from pathmllm.bench.runner import BenchConfig, run_benchmark
from pathmllm.cli.main import app
from tests.conftest import shared

pytestmark = pytest.mark.data


def test_lc25000_lung_zero_shot_and_probes_with_the_tiny_vlm(tmp_path: Path, tiny_vlm: Any) -> None:
    lung = shared("tiles", "lc25000-lung")
    cfg = BenchConfig(model="tiny-qwen2-vl", tasks=["zs-lc25000-lung", "knn:lc25000-lung", "linear-probe:lc25000-lung"],
                      data_paths={"lc25000-lung": str(lung)}, out_dir=str(tmp_path / "out"),
                      cache_dir=str(tmp_path / "cache"), limit=24)
    run = run_benchmark(cfg, embedder=tiny_vlm)
    assert not run.errors
    tasks = run.results["tasks"]
    zs = tasks["zs-lc25000-lung"]
    assert zs["n"] == 24 and set(zs["details"]["classes"]) == {"lung_aca", "lung_n", "lung_scc"}
    for name in tasks:
        assert 0 <= tasks[name]["metrics"]["balanced_accuracy"] <= 1
    # the probes split LC25000 by its near-duplicate groups (groups.csv)
    assert tasks["knn:lc25000-lung"]["details"]["n_train"] == 24
    # a rerun computes nothing
    again = run_benchmark(cfg, embedder=tiny_vlm)
    assert all(t["cache"]["computed"] == 0 for t in again.results["tasks"].values())
    assert again.results["tasks"]["zs-lc25000-lung"]["metrics"] == zs["metrics"]


def test_zero_shot_eval_keeps_its_signature_and_keys(tiny_vlm: Any) -> None:
    from pathmllm.bench.zero_shot import zero_shot_eval
    from pathmllm.data.tile_classes import read_groups
    from pathmllm.train.embed import LC25000_NAMES

    tiles = read_groups(shared("tiles", "lc25000-lung"))[::50]
    res = zero_shot_eval(tiny_vlm, [str(t.path) for t in tiles], [t.label for t in tiles], LC25000_NAMES)
    assert {"balanced_accuracy", "accuracy", "n", "classes"} <= set(res) and res["n"] == len(tiles)
    assert res["classes"] == sorted(LC25000_NAMES)


def test_cli_runs_nct_crc_and_reports_two_models_side_by_side(tmp_path: Path) -> None:
    crc, lung = shared("tiles", "nct-crc-9"), shared("tiles", "lc25000-lung")
    runner = CliRunner()
    out = tmp_path / "results"
    common = ["--data", f"crc-100k={crc}", "--data", f"lc25000-lung={lung}", "--out", str(out),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--limit", "12"]
    res = runner.invoke(app, ["bench", "run", "-m", "tiny-qwen2-vl", "-t", "zs-crc-100k", "-t", "knn:lc25000-lung",
                              *common])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "tiny-qwen2-vl.json").read_text())
    crc_res = saved["tasks"]["zs-crc-100k"]
    assert crc_res["n"] == 9 and len(crc_res["details"]["classes"]) == 9  # one tile per class, flat folder
    # an image-only encoder: zero-shot fails clearly (exit 1: some tasks failed), kNN works
    res = runner.invoke(app, ["bench", "run", "-m", "handcrafted", "-t", "zs-crc-100k", "-t", "knn:lc25000-lung",
                              *common])
    assert res.exit_code == 1, res.output
    hand = json.loads((out / "handcrafted.json").read_text())["tasks"]
    assert "image-only" in hand["zs-crc-100k"]["error"] and "metrics" in hand["knn:lc25000-lung"]
    res = runner.invoke(app, ["bench", "report", str(out), "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "report.md").read_text()
    assert "| task | type | metric | handcrafted | tiny-qwen2-vl |" in md
    assert "| knn:lc25000-lung | knn | balanced_accuracy |" in md and "error" in md
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"] == ["handcrafted", "tiny-qwen2-vl"]
    row = next(r for r in report["rows"] if r["task"] == "knn:lc25000-lung" and r["metric"] == "accuracy")
    assert all(np.isfinite(v) for v in row["values"].values())


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "run", "-m", "tiny-qwen2-vl", "-t", "zs-nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown task" in res.output
    res = runner.invoke(app, ["bench", "run", "-m", "handcrafted", "-t", "zs-bach", "--data-root", str(tmp_path),
                              "--out", str(tmp_path), "--no-cache"])
    assert res.exit_code == 2 and "none of BACH" in res.output
    res = runner.invoke(app, ["bench", "report", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no such results file" in res.output
    for what in ("tasks", "datasets", "suites"):
        res = runner.invoke(app, ["bench", "ls", what, "--json"])
        assert res.exit_code == 0 and json.loads(res.output)
