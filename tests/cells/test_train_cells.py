"""The cells training recipe: config handling and resumption on a synthetic folder (fast), and
an integration test that trains on real MoNuSeg images for a few minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pathmllm.train.cells import (  # noqa: E402
    MONUSEG_TRAIN,
    MONUSEG_VAL,
    OptimConfig,
    RunExistsError,
    TrainCellsConfig,
    load_config,
    lr_at,
    train,
)
from pathmllm.utils.config import apply_overrides  # noqa: E402
from tests.conftest import REPO, shared  # noqa: E402

CONFIG = REPO / "configs" / "cells" / "monuseg.yaml"


# ---------------------------------------------------------------------------- a synthetic MoNuSeg folder


def _xml(polys: list[np.ndarray], mpp: float) -> str:
    regions = "".join(
        f'<Region Id="{i}"><Vertices>'
        + "".join(f'<Vertex X="{x:.2f}" Y="{y:.2f}"/>' for x, y in p)
        + "</Vertices></Region>"
        for i, p in enumerate(polys, start=1)
    )
    return f'<Annotations MicronsPerPixel="{mpp}"><Annotation><Regions>{regions}</Regions></Annotation></Annotations>'


def synthetic_folder(folder: Path, n: int = 3, size: int = 96, mpp: float = 0.5, seed: int = 0) -> list[str]:
    """``n`` H&E-like PNGs with dark round nuclei and their ImageScope XML files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[:] = (232, 196, 218)
        polys = []
        for _ in range(8):
            cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(3, 7)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (95, 55, 145)
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            polys.append(np.stack([cx + 0.5 + r * np.cos(t), cy + 0.5 + r * np.sin(t)], axis=1))
        img += rng.normal(0, 6, img.shape)
        name = f"SYN-{k}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.xml").write_text(_xml(polys, mpp))
        names.append(name)
    return names


def tiny_config(tmp_path: Path, steps: int = 4, **over: object) -> TrainCellsConfig:
    names = synthetic_folder(tmp_path / "data")
    data = {
        "out": str(tmp_path / "run"), "seed": 1, "threads": 1, "bf16": False, "log_every": 1,
        "checkpoint_every": 2,
        "data": {"root": str(tmp_path / "data"), "train": names[:2], "val": names[2:]},
        "model": {"base_channels": 4, "depth": 2, "mpp": 0.5},
        "augment": {"crop_size": 32},
        "optim": {"steps": steps, "batch_size": 2, "warmup_steps": 1},
    }
    from pathmllm.train.cells import config_from_dict

    return config_from_dict(apply_overrides(data, [f"{k}={v}" for k, v in over.items()]))


# ---------------------------------------------------------------------------- config


def test_shipped_config_loads_and_states_the_split() -> None:
    first = CONFIG.read_text().splitlines()[0]
    assert first.startswith("#") and "pathmllm train cells --config configs/cells/monuseg.yaml" in first
    cfg = load_config(CONFIG)
    assert cfg.data.train == MONUSEG_TRAIN and cfg.data.val == MONUSEG_VAL
    assert not set(cfg.data.train) & set(cfg.data.val)
    cfg2 = load_config(CONFIG, ["optim.steps=7", "model.base_channels=8", "data.val=[a, b]", "max_minutes=null"])
    assert (cfg2.optim.steps, cfg2.model.base_channels, cfg2.data.val, cfg2.max_minutes) == (7, 8, ["a", "b"], None)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) \['stepz'\]"):
        load_config(None, ["optim.stepz=3"])
    with pytest.raises(ValueError, match="key.path=value"):
        load_config(None, ["optim.steps"])
    with pytest.raises(ValueError, match="share"):
        load_config(None, [f"data.val=[{MONUSEG_TRAIN[0]}]"])
    with pytest.raises(ValueError, match="multiple of 16"):
        load_config(None, ["augment.crop_size=100"])
    with pytest.raises(ValueError, match="optim.steps: expected int, got 'many'"):
        load_config(None, ["optim.steps=many"])
    # YAML reads 1e-3 as a string; numbers are converted to the field's type
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_lr_schedule() -> None:
    cfg = OptimConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


# ---------------------------------------------------------------------------- the recipe on synthetic data


def test_train_writes_everything_and_resume_is_exact(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "a")
    res = train(cfg)
    out = Path(cfg.out)
    for f in ("config.yaml", "log.jsonl", "model.pt", "metrics.json", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mean"]) == {"dice", "aji", "f1", "pq"} and list(metrics["per_image"]) == ["SYN-2"]
    assert res.steps == 4

    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg)

    # the same run interrupted after 2 steps and resumed ends with identical weights and log
    cfg_b = tiny_config(tmp_path / "b")
    cfg_b.optim.steps = 2
    train(cfg_b)
    cfg_b.optim.steps = 4
    train(cfg_b, resume=True)
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(Path(cfg_b.out) / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    log_b = [json.loads(x) for x in (Path(cfg_b.out) / "log.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in log_b] == [x["loss"] for x in lines]


def test_resume_without_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, resume=True)


def test_cli_runs_the_recipe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.train import app

    cfg = tiny_config(tmp_path)
    import yaml

    from pathmllm.train.cells import config_to_dict

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    runner = CliRunner(env={"COLUMNS": "200"})
    res = runner.invoke(app, ["cells", "--config", str(path), "optim.steps=2", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["optim"]["steps"] == 2
    res = runner.invoke(app, ["cells", "--config", str(path), "optim.steps=2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 2
    res = runner.invoke(app, ["cells", "--config", str(path), "optim.steps=2"])
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, ["cells", "--config", str(path), "optim.nope=2"])
    assert res.exit_code == 2 and "unknown key" in res.output


# ---------------------------------------------------------------------------- real data


@pytest.mark.integration
@pytest.mark.data
def test_short_training_beats_untrained_and_watershed(tmp_path: Path) -> None:
    """About 2 minutes of CPU training on the 6 training images of the shipped split, scored on
    its 2 held-out images against the same network untrained and the watershed backend."""
    root = shared("nuclei", "monuseg-train")
    from pathmllm.cells.base import build_segmenter
    from pathmllm.cells.datasets import load_monuseg_folder
    from pathmllm.cells.metrics import score
    from pathmllm.cells.network import HoverNetLite

    # the shipped recipe with 300 steps of 4 crops of 192 px instead of 800 of 8 x 256 px (about
    # 1.5 minutes on 2 idle cores); max_minutes only guards against a very busy machine
    cfg = load_config(CONFIG, [
        f"data.root={root}", f"out={tmp_path / 'run'}", "optim.steps=300", "optim.batch_size=4",
        "augment.crop_size=192", "optim.warmup_steps=20", "optim.lr=3e-3",
        "log_every=50", "checkpoint_every=1000", "eval_every=0", "max_minutes=4", "bf16=false",
    ])
    t0 = time.perf_counter()
    res = train(cfg)
    train_s = time.perf_counter() - t0
    held_out = load_monuseg_folder(root, names=cfg.data.val)
    trained = HoverNetLite(weights=res.model_path)
    untrained = HoverNetLite(weights=None, config=cfg.model, postprocess=cfg.postprocess)
    watershed = build_segmenter("watershed")

    def mean_scores(seg: object) -> dict[str, float]:
        s = [score(x.labels, seg.segment(x.image, x.mpp)) for x in held_out]  # type: ignore[attr-defined]
        return {"dice": float(np.mean([v.dice for v in s])), "aji": float(np.mean([v.aji for v in s]))}

    got = {"trained": mean_scores(trained), "untrained": mean_scores(untrained), "watershed": mean_scores(watershed)}
    print(f"\ntrained {res.steps} steps in {train_s:.0f} s; held-out {cfg.data.val}: {got}")
    assert got["trained"]["dice"] > got["untrained"]["dice"] + 0.2
    assert got["trained"]["dice"] > got["watershed"]["dice"]
    assert got["trained"]["aji"] > got["untrained"]["aji"] + 0.1
