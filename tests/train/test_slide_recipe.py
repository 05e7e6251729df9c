"""The slide recipe end to end on real virtual slides (LC25000 tissue): the three stages, outputs,
exact resume, run-exists guard, slides without a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pathmllm.train.common import RunExistsError  # noqa: E402
from pathmllm.train.slide import load_config, train  # noqa: E402
from tests.conftest import shared  # noqa: E402

pytestmark = pytest.mark.data

SPEC = {"encoder": "handcrafted", "region_size": 2, "max_cells_per_patch": 8}
HIERARCHY = {"hidden_dim": 32, "num_heads": 4, "ccaf_layers": 1, "region_layers": 1, "region_grid_size": 2,
             "num_slide_tokens": 4, "resampler_layers": 1, "resampler_heads": 4}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 virtual slides (4x4 fields) prepared with the handcrafted encoder: qa.jsonl + stores."""
    from pathmllm.data.virtual_slides import make_virtual_cohort
    from pathmllm.models.hierarchy.pipeline import SlidePipelineSpec, prepare_slide

    tiles = shared("tiles", "lc25000-lung")
    tmp = tmp_path_factory.mktemp("slide-cohort")
    made = make_virtual_cohort(tiles, tmp / "train", 4, seed=0, prefix="train", grid=(4, 4))
    spec = SlidePipelineSpec(**SPEC)
    for s in made.slides:
        prepare_slide(s.path, tmp / "stores", spec, device="cpu")
    return {"qa": made.qa_path, "stores": tmp / "stores", "root": tmp}


def _overrides(out: Path, cohort: dict[str, Path], *, hierarchy: bool = True, **extra: object) -> list[str]:
    base: dict[str, object] = {"out": str(out), "data.train": str(cohort["qa"]), "data.stores": str(cohort["stores"]),
                               "optim.steps": 6, "optim.batch_size": 4, "optim.warmup_steps": 1,
                               "checkpoint_every": 3, "log_every": 1, "threads": 1, "optim.lr": 3e-3}
    base.update({f"pipeline.{k}": v for k, v in SPEC.items()})
    if hierarchy:
        base.update({f"hierarchy.{k}": v for k, v in HIERARCHY.items()})
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _encoder(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "hierarchy.safetensors"))


@pytest.fixture(scope="module")
def stage1(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "s1"
    result = train(load_config(None, _overrides(out, cohort), stage=1))
    assert result.steps == 6 and Path(result.model_dir) == out / "model"
    return out


def test_stage1_outputs(stage1: Path, cohort: dict[str, Path]) -> None:
    model = stage1 / "model"
    assert (model / "hierarchy.safetensors").is_file() and (model / "llm" / "config.json").is_file()
    spec = json.loads((model / "pathmllm_slide.json").read_text())
    assert spec["encoder"] == "handcrafted" and spec["region_size"] == 2 and spec["max_cells_per_patch"] == 8
    n = len(spec["cell_columns"])
    assert spec["cell_mean"] and len(spec["cell_mean"]) == n and len(spec["cell_std"]) == n
    assert all(s > 0 for s in spec["cell_std"]) and any(m != 0 for m in spec["cell_mean"])
    hier = json.loads((model / "hierarchy_config.json").read_text())
    assert hier["hidden_dim"] == 32 and hier["patch_feature_dim"] > 0 and hier["cell_feature_dim"] == n
    log = _log(stage1)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for r in log:
        assert {"loss", "lr", "contrastive", "consistency"} <= set(r) and "lm" not in r
        assert {"contrastive_cell", "contrastive_patch", "contrastive_region", "contrastive_slide"} <= set(r)
        assert r["loss"] == pytest.approx(r["contrastive"] * 1.0 + r["consistency"] * 0.5, abs=2e-4)
    assert (stage1 / "checkpoints" / "last" / "step.json").is_file()
    assert json.loads((stage1 / "checkpoints" / "last" / "step.json").read_text()) == {"step": 6}
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert metrics["stage"] == 1 and metrics["steps"] == 6 and metrics["slides"] == 4
    assert metrics["skipped_slides"] == []
    assert metrics["loss_weights"] == {"lm": 0.0, "contrastive": 1.0, "consistency": 0.5}
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(load_config(None, _overrides(stage1, cohort), stage=1))


def test_resume_is_exact(stage1: Path, cohort: dict[str, Path], tmp_path: Path) -> None:
    """A run stopped after its first step (``max_minutes=0``) and resumed ends exactly where the
    straight 6-step run (``stage1``) ends: same losses, same encoder weights."""
    part = tmp_path / "part"
    result = train(load_config(None, _overrides(part, cohort, max_minutes=0.0), stage=1))
    assert result.steps == 1
    assert [r["step"] for r in _log(part)] == [1]
    assert json.loads((part / "checkpoints" / "last" / "step.json").read_text()) == {"step": 1}
    after_one = _encoder(part)
    assert any(not torch.equal(after_one[k], v) for k, v in _encoder(stage1).items())  # training moves weights
    result = train(load_config(None, _overrides(part, cohort), stage=1), resume=True)
    assert result.steps == 6
    straight, resumed = _log(stage1), _log(part)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], abs=1e-5)
    a, b = _encoder(stage1), _encoder(part)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_stages_2_and_3_load_for_ask(stage1: Path, cohort: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from pathmllm.models.hierarchy.ask import load_slide_model

    s2, s3 = tmp_path / "s2", tmp_path / "s3"
    # the hierarchy and pipeline sections may repeat the checkpoint's values
    train(load_config(None, _overrides(s2, cohort, init=stage1 / "model", **{"optim.steps": 3}), stage=2))
    log2 = _log(s2)
    assert [r["step"] for r in log2] == [1, 2, 3]
    assert {"lm", "contrastive", "consistency"} <= set(log2[0])
    before = _encoder(stage1)
    after2 = _encoder(s2)
    # stage 2 moves projectors and resampler, not CCAF or the aggregators
    assert any(not torch.equal(before[k], after2[k]) for k in before if k.startswith("projectors."))
    for key in before:
        if key.startswith(("ccaf.", "region_aggregator.", "slide_aggregator.", "patch_in.", "cell_to_patch.")):
            assert torch.equal(before[key], after2[key]), key
    assert any(not torch.equal(before[k], after2[k]) for k in before if k.startswith("resampler."))

    train(load_config(None, _overrides(s3, cohort, hierarchy=False, init=s2 / "model",
                                       **{"optim.steps": 3, "lora.enabled": "true", "lora.r": 4}), stage=3))
    log3 = _log(s3)
    assert [r["step"] for r in log3] == [1, 2, 3] and {"lm", "contrastive", "consistency"} <= set(log3[0])
    after3 = _encoder(s3)
    # the projectors still train in stage 3 (hierarchical losses are not inert)
    assert any(not torch.equal(after2[k], after3[k]) for k in after2 if k.startswith("projectors."))
    for folder in (stage1 / "model", s2 / "model", s3 / "model"):
        model, spec = load_slide_model(folder, device="cpu")
        assert spec.encoder == "handcrafted" and spec.region_size == 2 and spec.cell_mean is not None
        assert model.config.hidden_dim == 32 and not model.lora_applied
        assert not any("lora" in n for n, _ in model.named_parameters())
    # the LM changed in stage 3 (merged LoRA), not in stage 2
    from safetensors.torch import load_file

    lm1 = load_file(str(stage1 / "model" / "llm" / "model.safetensors"))
    lm2 = load_file(str(s2 / "model" / "llm" / "model.safetensors"))
    lm3 = load_file(str(s3 / "model" / "llm" / "model.safetensors"))
    assert all(torch.equal(lm1[k], lm2[k]) for k in lm1)
    changed = {k for k in lm2 if not torch.equal(lm2[k], lm3[k])}
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


def test_slide_without_store_is_skipped(cohort: dict[str, Path], tmp_path: Path) -> None:
    lines = cohort["qa"].read_text().splitlines()
    ghost = json.loads(lines[0])
    ghost["slide_id"] = "ghost-999"
    for key in ("source", "image"):
        if key in ghost:
            ghost[key] = "ghost-999.tiff"
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(lines + [json.dumps(ghost)]) + "\n")
    out = tmp_path / "ghost"
    result = train(load_config(None, _overrides(out, cohort, **{"data.train": qa, "optim.steps": 2,
                                                                "checkpoint_every": 0}), stage=1))
    assert result.steps == 2
    skipped = result.metrics["skipped_slides"]
    assert len(skipped) == 1 and "ghost-999" in skipped[0] and "no slide store" in skipped[0]
    assert result.metrics["slides"] == 4
    assert json.loads((out / "metrics.json").read_text())["skipped_slides"] == skipped


def test_stage1_two_processes_equal_one(stage1: Path, cohort: dict[str, Path], tmp_path: Path) -> None:
    """Stage 1 on 2 CPU processes (torchrun + gloo; contrastive negatives gathered with gradient,
    text keys equal on both ranks): the same losses and encoder weights as one process."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pathmllm", "train",
           "slide", "--stage", "1", *_overrides(two, cohort)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    one_log, two_log = _log(stage1), _log(two)
    for a, b in zip(one_log, two_log, strict=True):
        for key in ("loss", "contrastive", "consistency"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    a, b = _encoder(stage1), _encoder(two)
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("self_attn.in_proj_bias"):
            # the key bias adds the same score to every key, so softmax ignores it: its true
            # gradient is 0 and AdamW turns rounding noise into lr-sized steps that differ with
            # the reduction order; compare the query and value biases only
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=key)
