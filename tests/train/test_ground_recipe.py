"""The grounding recipe (``pathmllm train ground``): config errors, trainable groups per stage,
a three-stage mini run on Kvasir-SEG (vl -> seg -> moe) with its outputs, MoE experts taken from
the vl / seg models, routing statistics, exact resume, and clear errors for unusable data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from pathmllm.train.ground import (  # noqa: E402
    GROUPS,
    STAGE_DEFAULTS,
    build_model,
    load_config,
    set_trainable,
    stage_groups,
    train,
)
from tests.conftest import REPO, shared  # noqa: E402

EXAMPLE = REPO / "configs" / "ground" / "kvasir.yaml"
DATA = ["data.train=records.json", "data.image_root=images"]  # load_config does not open them


def _cfg(stage: str | None = "vl", *extra: str, path: Path | None = None):
    return load_config(path, [*DATA, *extra], stage=stage)


# ------------------------------------------------------------------------------------------ config errors


@pytest.mark.parametrize(("stage", "overrides", "message"), [
    ("detect", [], r"stage must be one of vl, seg, moe, got 'detect'"),
    ("moe", [], r"model\.init"),
    ("moe", ["model.init=out/seg/model"], r"moe\.vl_model"),
    ("vl", ["trainable=[region, decoder]"], r"unknown trainable group.*'decoder'.*choose from"),
    ("vl", ["lora.enabled=true", "trainable=[lm, region]"], r"lora\.enabled"),
    ("seg", ["lora.enabled=true", "trainable=[lm_ffn, seg_head]"], r"lora\.enabled"),
    ("vl", ["trainable={vl: [region], stage2: [lm]}"], r"unknown stage key.*'stage2'"),
    ("vl", ["trainable=region"], r"trainable must be a list"),
    ("vl", ["optim.steps=0"], r"optim\.steps"),
    ("vl", ["log_every=0"], r"log_every must be >= 1"),
    ("moe", ["model.init=a", "moe.vl_model=b", "moe.layers=first"], r"moe\.layers must be 'all' or"),
])
def test_config_errors(stage: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cfg(stage, *overrides)


def test_missing_data_train() -> None:
    with pytest.raises(ValueError, match=r"data\.train.*required"):
        load_config(None, ["data.image_root=images"], stage="vl")
    with pytest.raises(ValueError, match=r"data\.image_root"):
        load_config(None, ["data.train=x.json"], stage="vl")


def test_example_config_loads_for_every_stage() -> None:
    cfg = load_config(EXAMPLE, [], stage="vl")
    assert cfg.model.backbone == "tiny-qwen2-vl" and cfg.data.split == "train" and cfg.data.eval_split == "test"
    assert stage_groups(cfg) == ["vision", "lm", "region"]
    assert stage_groups(load_config(EXAMPLE, [], stage="seg")) == ["lm_ffn", "embeddings", "seg_head", "sam_decoder",
                                                                   "sam_vision"]
    cfg = load_config(EXAMPLE, ["model.init=a", "moe.vl_model=b"], stage="moe")
    assert stage_groups(cfg) == ["router", "experts", "embeddings", "seg_head", "sam_decoder"]
    # the example trains the LM in full: LoRA on top of it is refused with the fix named
    with pytest.raises(ValueError, match=r"lora\.enabled"):
        load_config(EXAMPLE, ["lora.enabled=true"], stage="vl")


def test_stage_defaults_and_dict_fallback() -> None:
    for stage in ("vl", "seg"):
        assert stage_groups(_cfg(stage)) == STAGE_DEFAULTS[stage]["trainable"]
    assert stage_groups(_cfg("moe", "model.init=a", "moe.experts=[a, b]")) == ["router", "seg_head", "sam_decoder",
                                                                              "embeddings"]
    # a stage missing from the mapping takes its default
    assert stage_groups(_cfg("seg", "trainable={vl: [lm]}")) == ["seg_head", "sam_decoder", "embeddings"]
    assert _cfg("seg").losses.resolved("seg")["dice"] == 5.0
    assert _cfg("seg", "losses.dice=2").losses.resolved("seg")["dice"] == 2.0


@pytest.mark.parametrize("args", [
    ["--stage", "detect"],
    ["--stage", "moe"],
    ["--stage", "moe", "model.init=x"],
    ["--stage", "vl", "trainable=[region, nope]"],
    ["--stage", "vl", "lora.enabled=true", "trainable=[lm]"],
    ["--stage", "vl", "trainable={vl: [region], other: [lm]}"],
])
def test_cli_exit_2_on_bad_config(args: list[str], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    result = CliRunner().invoke(app, ["train", "ground", *args, *DATA, f"out={tmp_path / 'o'}"])
    assert result.exit_code == 2, result.output
    assert "error" in result.output.lower()
    assert not (tmp_path / "o").exists()


def test_cli_exit_2_without_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    result = CliRunner().invoke(app, ["train", "ground", "--stage", "vl", f"out={tmp_path / 'o'}"])
    assert result.exit_code == 2
    assert "data.train" in result.output


def test_cli_dry_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    result = CliRunner().invoke(app, ["train", "ground", "--stage", "seg", "-c", str(EXAMPLE), "--dry-run",
                                      f"out={tmp_path / 'o'}"])
    assert result.exit_code == 0, result.output
    assert "stage: seg" in result.output
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ trainable groups


@pytest.fixture(scope="module")
def tiny_model():
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.seg import MaskDecoderWrapper, build_tiny_sam

    torch.manual_seed(0)
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    return GroundingLM(bb, MaskDecoderWrapper(build_tiny_sam()))


@pytest.fixture(scope="module")
def tiny_moe_model():
    from pathmllm.models.backbone import load_backbone
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.models.grounding.seg import MaskDecoderWrapper, build_tiny_sam

    torch.manual_seed(0)
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    model = GroundingLM(bb, MaskDecoderWrapper(build_tiny_sam()))
    model.make_moe("all", num_experts=2)
    return model


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _prefixes(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        if n.startswith("model.model.language_model."):
            out.add("lm")
        elif n.startswith("model.model.visual."):
            out.add("vision")
        elif n.startswith("model.lm_head."):
            out.add("lm")
        else:
            out.add(".".join(n.split(".")[:3]) if n.startswith("sam.") else n.split(".")[0])
    return out


def test_set_trainable_stage_defaults(tiny_model, tiny_moe_model) -> None:
    emb = {n for n, _ in tiny_model.named_parameters() if "embed_tokens" in n or n.startswith("model.lm_head.")}
    assert emb  # input embeddings (the LM head is tied to them in the tiny preset)
    names = set_trainable(tiny_model, STAGE_DEFAULTS["vl"]["trainable"], lora=False)
    assert set(names) == _trainable(tiny_model) and names
    assert {n for n in names if not n.startswith("region_encoder.")} == emb
    assert tiny_model.sam.freeze_vision_encoder and tiny_model.sam.freeze_prompt_encoder

    names = set(set_trainable(tiny_model, STAGE_DEFAULTS["seg"]["trainable"], lora=False))
    assert names == _trainable(tiny_model)
    # every weight of the [SEG] head and the mask decoder, and the embeddings
    assert {n for n, _ in tiny_model.named_parameters() if n.startswith(("seg_head.", "sam.sam.mask_decoder."))} \
        | emb == names

    names = set(set_trainable(tiny_moe_model, STAGE_DEFAULTS["moe"]["trainable"], lora=False))
    routers = {n for n, _ in tiny_moe_model.named_parameters() if ".router." in n}
    moe_emb = {n for n, _ in tiny_moe_model.named_parameters() if "embed_tokens" in n}
    assert routers and routers <= names
    assert {n for n in names if n.startswith("model.")} == routers | moe_emb
    assert _prefixes(names) == {"lm", "seg_head", "sam.sam.mask_decoder"}


def test_set_trainable_tiny_config_groups(tiny_model, tiny_moe_model) -> None:
    # vl: vision tower, whole LM, region encoder
    names = set(set_trainable(tiny_model, ["vision", "lm", "region"], lora=False))
    assert _prefixes(names) == {"vision", "lm", "region_encoder"}
    lm_all = {n for n, _ in tiny_model.named_parameters() if n.startswith("model.model.language_model.")}
    assert lm_all <= names
    # seg: FFNs only, not attention; SAM's image encoder unfrozen
    names = set(set_trainable(tiny_model, ["lm_ffn", "seg_head", "sam_decoder", "sam_vision"], lora=False))
    lm = {n for n in names if n.startswith("model.")}
    assert lm and all(".mlp." in n for n in lm)
    assert not any("self_attn" in n or "embed_tokens" in n for n in lm)
    assert any(n.startswith("sam.sam.vision_encoder.") for n in names)
    assert not tiny_model.sam.freeze_vision_encoder
    assert not any(n.startswith("sam.sam.prompt_encoder.") for n in names)
    # embeddings: input embeddings (+ LM head when untied)
    names = set(set_trainable(tiny_model, ["embeddings"], lora=False))
    assert names and all("embed_tokens" in n or n.startswith("model.lm_head.") for n in names)
    # moe with the LM trained in full: the routers stay frozen unless named
    names = set(set_trainable(tiny_moe_model, ["lm"], lora=False))
    assert not any(".router." in n for n in names)
    assert any(".experts.1." in n for n in names)
    names = set(set_trainable(tiny_moe_model, ["experts"], lora=False))
    assert names and all(".experts." in n for n in names)


def test_router_group_outside_moe(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"'router'.*match no weight.*moe"):
        set_trainable(tiny_model, ["router", "seg_head"], lora=False)
    with pytest.raises(ValueError, match=r"'experts'"):
        set_trainable(tiny_model, ["experts"], lora=False)


def test_groups_cover_the_documented_names() -> None:
    assert set(GROUPS) == {"vision", "lm", "lm_ffn", "embeddings", "region", "seg_head", "sam_decoder",
                           "sam_vision", "router", "experts"}


# ------------------------------------------------------------------------------------------ mini runs

LIMIT = 8  # Kvasir images (train and test records in one file)
SIZE = 112  # the images and masks are downscaled to SIZE x SIZE to keep the runs fast on a CPU


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first LIMIT Kvasir-SEG images (downscaled, with their masks and boxes) converted to MeCoVQA."""
    from PIL import Image

    from pathmllm.data.mecovqa import kvasir_to_mecovqa

    src = shared("grounding", "kvasir-seg")
    tmp = tmp_path_factory.mktemp("kvasir")
    root = tmp / "kvasir-seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = sorted(p.stem for p in (src / "images").iterdir())[:LIMIT]
    for stem in stems:
        with Image.open(next((src / "images").glob(stem + ".*"))) as im:
            im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(root / "images" / f"{stem}.png")
        with Image.open(next((src / "masks").glob(stem + ".*"))) as im:
            im.convert("L").resize((SIZE, SIZE), Image.NEAREST).save(root / "masks" / f"{stem}.png")
    boxes = json.loads((src / "bboxes.json").read_text())
    (root / "bboxes.json").write_text(json.dumps({s: boxes[s] for s in stems if s in boxes}))
    records = kvasir_to_mecovqa(root, tmp / "mecovqa.json", split="all")
    splits = {r["split"] for r in json.loads(records.read_text())}
    assert splits == {"train", "test"}
    return {"root": root, "json": records, "tmp": tmp}


def _run_overrides(out: Path, kvasir: dict[str, Path], *extra: str, steps: int = 2, evaluate: bool = True) -> list[str]:
    base = [f"out={out}", f"data.train={kvasir['json']}", f"data.image_root={kvasir['root']}",
            f"optim.steps={steps}", "optim.batch_size=2", "optim.warmup_steps=1", "log_every=1",
            "checkpoint_every=2", "threads=1", "max_new_tokens=2", "model.sam_image_size=32"]
    if evaluate:
        base += [f"data.eval={kvasir['json']}", "data.max_eval=3"]
    else:
        base += ["data.eval=null"]
    return base + list(extra)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def stages(kvasir: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("ground-runs")
    vl, seg, moe = runs / "vl", runs / "seg", runs / "moe"
    r = train(load_config(EXAMPLE, _run_overrides(vl, kvasir), stage="vl"))
    assert r.steps == 2 and Path(r.model_dir) == vl / "model"
    train(load_config(EXAMPLE, _run_overrides(seg, kvasir, f"model.init={vl / 'model'}"), stage="seg"))
    train(load_config(EXAMPLE, _run_overrides(moe, kvasir, f"model.init={seg / 'model'}",
                                              f"moe.vl_model={vl / 'model'}", "data.eval_split=test"), stage="moe"))
    return {"vl": vl, "seg": seg, "moe": moe}


@pytest.mark.data
def test_stage_outputs(stages: dict[str, Path]) -> None:
    for stage, out in stages.items():
        assert (out / "model" / "grounding.json").is_file() and (out / "model" / "model.safetensors").is_file()
        assert (out / "config.yaml").is_file()
        assert json.loads((out / "checkpoints" / "last" / "step.json").read_text()) == {"step": 2}
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["stage"] == stage and metrics["steps"] == 2 and metrics["records"] > 0
        ev = metrics["eval"]
        assert ev["n"] == 3 and "segmentation" in ev and "closed" in ev and "predictions" not in ev
        log = _log(out)
        assert [r["step"] for r in log] == [1, 2]
        assert all(math.isfinite(r["loss"]) for r in log)
        assert {"lm", "mask", "bce", "dice", "lr"} <= set(log[0])
    assert json.loads((stages["vl"] / "metrics.json").read_text())["moe"] is None
    moe_metrics = json.loads((stages["moe"] / "metrics.json").read_text())
    assert moe_metrics["moe"] == {"layers": [0, 1], "num_experts": 2, "top_k": 1}
    assert moe_metrics["eval"]["n"] == 3
    grounding = json.loads((stages["moe"] / "model" / "grounding.json").read_text())
    assert grounding["moe"] == moe_metrics["moe"]
    # the vl stage trains no mask; the seg stage does, with its own weights (MedPLIB: BCE 1 + Dice 5;
    # the moe stage: BCE 2 + Dice 0.5), not those stored in the model folder it started from
    assert all(r["mask"] == 0 for r in _log(stages["vl"]))
    assert all(r["mask"] > 0 for r in _log(stages["seg"]))
    for r in _log(stages["seg"]):
        assert r["mask"] == pytest.approx(r["bce"] + 5 * r["dice"], rel=1e-3)
    for r in _log(stages["moe"]):
        assert r["mask"] == pytest.approx(2 * r["bce"] + 0.5 * r["dice"], rel=1e-3)


@pytest.mark.data
def test_stage_records_by_task(stages: dict[str, Path], kvasir: dict[str, Path]) -> None:
    recs = [r for r in json.loads(kvasir["json"].read_text()) if r["split"] == "train"]
    seg = sum(1 for r in recs if r["id"].endswith("-seg"))
    metrics = {s: json.loads((o / "metrics.json").read_text()) for s, o in stages.items()}
    assert metrics["seg"]["records"] == seg
    assert metrics["vl"]["records"] == len(recs) - seg  # region questions (no plain vqa in Kvasir)
    assert metrics["moe"]["records"] == len(recs)


@pytest.mark.data
def test_stages_chain_and_change_the_right_weights(stages: dict[str, Path]) -> None:
    vl, seg = _weights(stages["vl"] / "model"), _weights(stages["seg"] / "model")
    assert vl.keys() == seg.keys()
    changed = {k for k in vl if not torch.equal(vl[k], seg[k])}
    assert changed
    # tiny config's seg groups: LM FFNs, embeddings (+ tied LM head), [SEG] head, SAM decoder and
    # image encoder
    assert all(".mlp." in k or "embed_tokens" in k or k.startswith(("model.lm_head.", "seg_head.",
               "sam.sam.mask_decoder.", "sam.sam.vision_encoder.")) for k in changed), sorted(changed)[:5]
    assert not any(k.startswith(("region_encoder.", "model.model.visual.")) for k in changed)
    assert not any("self_attn" in k for k in changed if k.startswith("model."))


@pytest.mark.data
def test_moe_experts_come_from_vl_and_seg(stages: dict[str, Path], kvasir: dict[str, Path], tmp_path: Path) -> None:
    """Right after build_model, expert 0 holds the vl model's FFN and expert 1 the seg model's."""
    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "x", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.vl_model={stages['vl'] / 'model'}"), stage="moe")
    model = build_model(cfg, "cpu")
    vl, seg = _weights(stages["vl"] / "model"), _weights(stages["seg"] / "model")
    state = model.state_dict()
    mods = model.moe_modules()
    assert [m.layer_index for m in mods] == [0, 1]
    differ = 0
    for key in [k for k in vl if ".mlp." in k and k.startswith("model.model.language_model.")]:
        head, tail = key.split(".mlp.")
        e0, e1 = state[f"{head}.mlp.experts.0.{tail}"], state[f"{head}.mlp.experts.1.{tail}"]
        assert torch.equal(e0, vl[key]), key
        assert torch.equal(e1, seg[key]), key
        differ += not torch.equal(vl[key], seg[key])
    assert differ > 0  # the seg stage trained the FFNs: the experts really are different
    # attention and the rest come from model.init (the seg model)
    for key in [k for k in seg if ".mlp." not in k]:
        assert torch.equal(state[key], seg[key]), key
    # explicit experts in the other order
    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "y", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.experts=[{stages['seg'] / 'model'},{stages['vl'] / 'model'}]",
                                              "moe.layers=[1]"), stage="moe")
    model = build_model(cfg, "cpu")
    state = model.state_dict()
    assert [m.layer_index for m in model.moe_modules()] == [1]
    key = next(k for k in vl if "layers.1.mlp." in k and "language_model" in k)
    head, tail = key.split(".mlp.")
    assert torch.equal(state[f"{head}.mlp.experts.0.{tail}"], seg[key])
    assert torch.equal(state[f"{head}.mlp.experts.1.{tail}"], vl[key])
    assert not any(".experts." in k for k in state if "layers.0.mlp" in k)


@pytest.mark.data
def test_moe_expert_must_be_a_grounding_model(stages: dict[str, Path], kvasir: dict[str, Path],
                                              tmp_path: Path) -> None:
    from pathmllm.models.backbone import CheckpointError

    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "x", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.vl_model={tmp_path}"), stage="moe")
    with pytest.raises(CheckpointError, match="not a saved grounding model"):
        build_model(cfg, "cpu")
    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "x", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.experts=[{stages['moe'] / 'model'},{stages['seg'] / 'model'}]"),
                      stage="moe")
    with pytest.raises(CheckpointError, match="already a Mixture-of-Experts"):
        build_model(cfg, "cpu")


@pytest.mark.data
def test_moe_routing_statistics_logged(stages: dict[str, Path]) -> None:
    log = _log(stages["moe"])
    assert all("routing" in r and "balance" in r for r in log)
    for rec in log:
        routing = rec["routing"]
        assert set(routing) == {"image", "region", "seg", "answer_text", "prompt_text", "modality:endoscopy"}
        tokens = rec["routing_tokens"]  # how many tokens each group's fractions are over
        assert set(tokens) == set(routing) and tokens["image"] > 0 and tokens["answer_text"] > 0
        assert all((tokens[g] == 0) == (routing[g]["0"][0] is None) for g in routing)
        for group, per_layer in routing.items():
            assert set(per_layer) == {"0", "1"}, group
            for fr in per_layer.values():
                assert len(fr) == 2
                if any(v is None for v in fr):
                    assert all(v is None for v in fr), (group, fr)
                    assert group in ("region", "seg"), (group, fr)  # the only groups a batch may lack
                else:
                    assert sum(fr) == pytest.approx(1.0, abs=2e-4), (group, fr)
                    assert all(0 <= v <= 1 for v in fr)
        # every batch has image, prompt and answer tokens
        for g in ("image", "prompt_text", "answer_text", "modality:endoscopy"):
            assert None not in routing[g]["0"]
    assert not any("routing" in r for r in _log(stages["seg"]))


@pytest.mark.data
def test_resume_is_exact(stages: dict[str, Path], kvasir: dict[str, Path], tmp_path: Path) -> None:
    """A 2-step moe run resumed to 4 steps ends where a straight 4-step run ends (constant LR, so the
    schedule does not depend on optim.steps; the MoE model is rebuilt from model.init + experts)."""
    common = [f"model.init={stages['seg'] / 'model'}", f"moe.vl_model={stages['vl'] / 'model'}",
              "optim.warmup_steps=0", "optim.min_lr_ratio=1.0", "moe.jitter=0.1"]
    straight, part = tmp_path / "straight", tmp_path / "part"
    train(load_config(EXAMPLE, _run_overrides(straight, kvasir, *common, steps=4, evaluate=False), stage="moe"))
    r = train(load_config(EXAMPLE, _run_overrides(part, kvasir, *common, steps=2, evaluate=False), stage="moe"))
    assert r.steps == 2
    two = _weights(part / "model")
    r = train(load_config(EXAMPLE, _run_overrides(part, kvasir, *common, steps=4, evaluate=False), stage="moe"),
              resume=True)
    assert r.steps == 4
    a, b = _log(straight), _log(part)
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], abs=1e-5)
    assert [x["routing"] for x in b] == [x["routing"] for x in a]
    wa, wb = _weights(straight / "model"), _weights(part / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert any(not torch.equal(two[k], wb[k]) for k in wb)  # steps 3-4 did train


@pytest.mark.data
def test_two_processes_train_and_count_routing_over_the_global_batch(
        stages: dict[str, Path], kvasir: dict[str, Path], tmp_path: Path) -> None:
    """The moe stage under torchrun with 2 CPU processes (1 example each): it trains, saves one
    model, and its step-1 routing statistics are those of the whole global batch, equal to one
    process's on the same two examples (same initial weights; no flips, no jitter)."""
    common = [f"model.init={stages['seg'] / 'model'}", f"moe.vl_model={stages['vl'] / 'model'}",
              "data.flip=false", "moe.jitter=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(EXAMPLE, _run_overrides(one, kvasir, *common, evaluate=False), stage="moe"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pathmllm", "train",
           "ground", "--stage", "moe", "-c", str(EXAMPLE), *_run_overrides(two, kvasir, *common, evaluate=False)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    assert _weights(one / "model").keys() == _weights(two / "model").keys()
    first_one, first_two = _log(one)[0], _log(two)[0]
    assert first_two["step"] == 1 and math.isfinite(first_two["loss"])
    # the counts cover both processes' examples: as many tokens as one process with both
    assert first_two["routing_tokens"] == first_one["routing_tokens"]
    assert first_one["routing_tokens"]["image"] > 0
    for group, per_layer in first_one["routing"].items():
        for layer, fr in per_layer.items():
            got = first_two["routing"][group][layer]
            if fr[0] is None:
                assert got[0] is None, (group, layer)
            else:
                assert got == pytest.approx(fr, abs=1e-3), (group, layer)


@pytest.mark.data
def test_run_exists_guard(stages: dict[str, Path], kvasir: dict[str, Path]) -> None:
    from pathmllm.train.common import RunExistsError

    with pytest.raises(RunExistsError):
        train(load_config(EXAMPLE, _run_overrides(stages["vl"], kvasir), stage="vl"))


# ------------------------------------------------------------------------------------------ unusable data


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


@pytest.mark.data
def test_seg_stage_all_records_fail_to_load(kvasir: dict[str, Path], tmp_path: Path) -> None:
    recs = json.loads(kvasir["json"].read_text())
    for r in recs:
        r["image"] = "images/not-there-" + Path(r["image"]).name
    bad = _write(tmp_path / "bad.json", recs)
    cfg = load_config(None, [f"out={tmp_path / 'o'}", f"data.train={bad}", f"data.image_root={kvasir['root']}",
                             "optim.steps=1", "optim.batch_size=2"], stage="seg")
    with pytest.raises(ValueError, match=rf"no usable grounding records for stage seg \(0 read, {len(recs)} skipped\)"):
        train(cfg)
    skipped = json.loads((tmp_path / "o" / "skipped.json").read_text())
    assert len(skipped) == len(recs)


@pytest.mark.data
def test_seg_stage_without_grounding_records(kvasir: dict[str, Path], tmp_path: Path) -> None:
    recs = [r for r in json.loads(kvasir["json"].read_text()) if not r["id"].endswith("-seg")]
    only_region = _write(tmp_path / "region.json", recs)
    cfg = load_config(None, [f"out={tmp_path / 'o'}", f"data.train={only_region}",
                             f"data.image_root={kvasir['root']}", "optim.steps=1", "optim.batch_size=2"], stage="seg")
    with pytest.raises(ValueError, match=r"no usable grounding records for stage seg"):
        train(cfg)
    # the CLI turns it into exit code 2 with the message
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    result = CliRunner().invoke(app, ["train", "ground", "--stage", "seg", f"out={tmp_path / 'cli'}",
                                      f"data.train={only_region}", f"data.image_root={kvasir['root']}",
                                      "optim.steps=1", "optim.batch_size=2"])
    assert result.exit_code == 2, result.output
    assert "no usable grounding records" in result.output


@pytest.mark.data
def test_seg_records_without_target_mask_are_left_out(kvasir: dict[str, Path], tmp_path: Path) -> None:
    recs = [r for r in json.loads(kvasir["json"].read_text()) if r["id"].endswith("-seg")]
    for r in recs:
        r["conversations"][1]["value"] = "<SEG>"  # no <mask>: nothing to learn from
    path = _write(tmp_path / "nomask.json", recs)
    cfg = load_config(None, [f"out={tmp_path / 'o'}", f"data.train={path}", f"data.image_root={kvasir['root']}",
                             "optim.steps=1", "optim.batch_size=2"], stage="seg")
    with pytest.raises(ValueError, match=r"no usable grounding records"):
        train(cfg)


# ------------------------------------------------------------------------------------------ LoRA and MoE layers


@pytest.mark.data
def test_lora_seg_run_saves_merged_ffn(stages: dict[str, Path], kvasir: dict[str, Path], tmp_path: Path) -> None:
    """seg with lora.enabled: LoRA on the FFNs (stage default) is merged into OUT/model; attention,
    vision tower and region encoder stay the vl model's."""
    out = tmp_path / "lora"
    train(load_config(EXAMPLE, _run_overrides(out, kvasir, f"model.init={stages['vl'] / 'model'}", "lora.enabled=true",
                                              "trainable={seg: [seg_head, sam_decoder]}", evaluate=False),
                      stage="seg"))
    vl, seg = _weights(stages["vl"] / "model"), _weights(out / "model")
    assert vl.keys() == seg.keys()
    assert not [k for k in seg if "lora_" in k or "base_layer" in k]
    changed = {k for k in vl if not torch.equal(vl[k], seg[k])}
    lm_changed = {k for k in changed if k.startswith("model.")}
    assert lm_changed and all(".mlp." in k for k in lm_changed)
    assert not any(k.startswith(("region_encoder.", "sam.sam.vision_encoder.")) for k in changed)
    assert any(k.startswith("seg_head.") for k in changed)
    from pathmllm.models.grounding.model import GroundingLM

    assert GroundingLM.from_pretrained(out / "model", device="cpu").moe_layout is None


@pytest.mark.data
def test_moe_layers_out_of_range_is_an_error(stages: dict[str, Path], kvasir: dict[str, Path],
                                             tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "x", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.vl_model={stages['vl'] / 'model'}", "moe.layers=[2]"),
                      stage="moe")
    with pytest.raises(ValueError, match="out of range"):
        build_model(cfg, "cpu")
    cfg.moe.layers = [0, -2]
    with pytest.raises(ValueError, match="twice"):
        build_model(cfg, "cpu")


@pytest.mark.data
def test_moe_negative_layer_counts_from_the_end(stages: dict[str, Path], kvasir: dict[str, Path],
                                                tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, _run_overrides(tmp_path / "x", kvasir, f"model.init={stages['seg'] / 'model'}",
                                              f"moe.vl_model={stages['vl'] / 'model'}", "moe.layers=[-1]"),
                      stage="moe")
    assert build_model(cfg, "cpu").moe_layout == {"layers": [1], "num_experts": 2, "top_k": 1}


@pytest.mark.data
def test_bench_suite_grounding(stages: dict[str, Path], kvasir: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pathmllm.cli.main import app

    model = stages["moe"] / "model"
    args = ["bench", "run", "--suite", "grounding", "-m", str(model), "--qa", str(kvasir["json"]),
            "--image-root", str(kvasir["root"]), "--split", "test", "--limit", "4", "--max-new-tokens", "2",
            "--device", "cpu", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "model-grounding.json").read_text())
    assert saved["n"] == 4 and saved["split"] == "test" and len(saved["predictions"]) == 4
    assert "closed" in saved and "segmentation" in saved
    no_root = CliRunner().invoke(app, args[:6] + ["--split", "test"])
    assert no_root.exit_code == 2 and "--image-root" in no_root.output
    not_model = CliRunner().invoke(app, [*args[:5], str(tmp_path), *args[6:]])
    assert not_model.exit_code == 2
