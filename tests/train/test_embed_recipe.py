"""The embedding recipe: 2 processes == 1 process, exact resume, GradCache == plain, LoRA export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathmllm.data.pairs import PairRecord, Side, read_pairs_manifest, write_pairs_manifest
from pathmllm.data.tile_classes import caption_records, read_groups, split_by_group
from pathmllm.train.embed import LC25000_NAMES, batch_rows, load_config, train
from tests.conftest import REPO, shared

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 LC25000 tiles captioned by class, with a hard negative (another class's caption)."""
    root = shared("tiles", "lc25000-lung")
    tiles = read_groups(root)
    picked = [t for label in LC25000_NAMES for t in [x for x in tiles if x.label == label][:6]][:16]
    records = caption_records(picked, LC25000_NAMES)
    other = {"lung_aca": "lung_n", "lung_n": "lung_scc", "lung_scc": "lung_aca"}
    records = [PairRecord(r.query, r.positive, Side(text=LC25000_NAMES[other[r.key]]), r.key, r.extra)
               for r in records]
    path = tmp_path_factory.mktemp("pairs") / "train.jsonl"
    write_pairs_manifest(path, records)
    return path


def _overrides(out: Path, manifest: Path, **extra: object) -> list[str]:
    base = {"out": str(out), "data.train": str(manifest), "optim.steps": 3, "optim.batch_size": 8,
            "optim.warmup_steps": 1, "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
            "threads": 1, "optim.lr": 3e-3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def test_manifest_round_trip_and_errors(manifest: Path, tmp_path: Path) -> None:
    records = read_pairs_manifest(manifest)
    assert len(records) == 16 and records[0].query.kind == "image" and records[0].positive.kind == "text"
    assert records[0].negative is not None and records[0].key in LC25000_NAMES
    assert Path(records[0].query.image).is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": {"text": "a"}}\n')
    with pytest.raises(ValueError, match="needs a query and a positive"):
        read_pairs_manifest(bad)
    bad.write_text('{"query": {"text": "a"}, "positive": {"text": "  "}}\n')
    with pytest.raises(ValueError, match="positive text is empty"):
        read_pairs_manifest(bad)
    flat = tmp_path / "flat.jsonl"
    flat.write_text('{"query_image": "x.png", "positive_text": "tumour", "label": 3}\n')
    (rec,) = read_pairs_manifest(flat)
    assert rec.query.image == str(tmp_path / "x.png") and rec.extra == {"label": 3}


def test_group_split_never_leaks() -> None:
    tiles = read_groups(shared("tiles", "lc25000-lung"))
    train_tiles, val_tiles = split_by_group(tiles, 0.3, seed=0)
    assert not {t.group for t in train_tiles} & {t.group for t in val_tiles}
    for label in LC25000_NAMES:
        n_val = len({t.group for t in val_tiles if t.label == label})
        assert n_val == 30  # 30 % of each class's 100 groups


def test_batch_rows_cover_each_epoch_once() -> None:
    rows = [r for step in range(5) for r in batch_rows(step, 23, 4, seed=1)]
    assert len(set(rows)) == 20 and batch_rows(3, 23, 4, 1) == batch_rows(3, 23, 4, 1)


def test_gradcache_chunks_give_the_same_gradients(manifest: Path) -> None:
    """One step's gradients: GradCache chunks of 3 == one forward of the whole batch (with hard
    negatives and false-negative keys)."""
    from accelerate import Accelerator

    from pathmllm.train.embed import ImageCache, _items, build_embedder, contrastive_step

    records = read_pairs_manifest(manifest)[:8]
    cfg = load_config(None, ["data.train=x.jsonl"])
    acc = Accelerator(cpu=True)
    embedder, _ = build_embedder(cfg, "cpu")
    cache = ImageCache(64)
    sides = [_items([getattr(r, s) for r in records], cache) for s in ("query", "positive", "negative")]
    keys = torch.tensor([hash(r.key) % 7 for r in records])
    grads = []
    for chunk in (0, 3):
        cfg.optim.chunk_size = chunk
        embedder.module.zero_grad(set_to_none=True)
        loss = contrastive_step(embedder, acc, embedder.module, sides, keys, cfg)
        grads.append({k: p.grad.clone() for k, p in embedder.module.named_parameters() if p.grad is not None})
        assert torch.isfinite(loss)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, atol=1e-6, rtol=1e-4, msg=key)


def test_resume_is_exact(manifest: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(load_config(None, _overrides(straight, manifest, **{"optim.steps": 4})))
    part = tmp_path / "part"
    train(load_config(None, _overrides(part, manifest, **{"optim.steps": 4, "checkpoint_every": 2,
                                                          "max_minutes": 0.0})))
    assert _losses(part) == _losses(straight)[:1]  # stopped after the first step
    train(load_config(None, _overrides(part, manifest, **{"optim.steps": 4})), resume=True)
    assert _losses(part) == pytest.approx(_losses(straight), abs=1e-6)
    a, b = _weights(straight), _weights(part)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_lora_trains_adapters_only_and_exports_a_merged_model(manifest: Path, tmp_path: Path) -> None:
    from pathmllm.models.embedder import load_embedder
    from pathmllm.models.tiny import build_tiny

    out = tmp_path / "lora"
    train(load_config(None, _overrides(out, manifest, **{"lora.enabled": "true", "lora.r": 4,
                                                         "optim.lr": 0.05, "embed_token": "<emb>"})))
    assert not any("lora" in k for k in _weights(out))
    from pathmllm.models.backbone import load_backbone

    exported = load_backbone(out / "model", device="cpu").model.state_dict()
    base = build_tiny("tiny-qwen2-vl")[0].state_dict()
    changed = {k for k, v in exported.items() if k in base and v.shape == base[k].shape
               and not torch.equal(v, base[k])}
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    assert not any("visual" in k for k in changed)
    emb = load_embedder(out / "model", device="cpu")
    assert emb.templates.embed_token == "<emb>"
    assert emb.prompt("text", "tumour").endswith("<emb>")
    v = emb.embed_texts(["lung adenocarcinoma", "benign lung tissue"])
    assert v.shape == (2, 64) and np.isfinite(v).all()


def test_two_processes_equal_one(manifest: Path, tmp_path: Path) -> None:
    """2 CPU processes (torchrun; accelerate's Accelerator takes the gloo process group from it):
    the same losses and weights as one process on the same global batches. (``accelerate launch
    --cpu`` starts a single process unless MPI is installed, hence torchrun on CPU.)"""
    one = tmp_path / "one"
    train(load_config(None, _overrides(one, manifest)))
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pathmllm", "train",
           "embed", *_overrides(two, manifest)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((two / "metrics.json").read_text())
    assert cfg["processes"] == 2
    np.testing.assert_allclose(_losses(two), _losses(one), atol=1e-4)
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    # Same weights up to summation order: the two processes add two half-batch gradients where one
    # process sums the whole batch, and Adam turns a rounding-level change of a near-zero gradient
    # into up to ~lr per step for that element. So measure each tensor's difference against the
    # size of an Adam update (lr per element per step): a wrong gradient average or batch split
    # changes the updates themselves, i.e. a large fraction of that; rounding moves a few elements.
    lr, steps = 3e-3, 3
    for key in a:
        diff = (a[key] - b[key]).float()
        update_scale = lr * steps * diff.numel() ** 0.5
        assert float(torch.linalg.vector_norm(diff)) <= 0.05 * update_scale, (key, float(diff.abs().max()))
        assert float(diff.abs().max()) <= 2 * lr * steps, key  # Adam's bound for a flipped sign
