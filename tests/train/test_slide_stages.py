"""The slide recipe's stages: which parameters each loss reaches, texts, loss weights, config errors.

The gradient-flow table (:data:`EXPECTED_FLOW`) documents, per stage and per loss that is on in
that stage (``STAGE_LOSSES``), the top-level parameter groups that receive a non-zero gradient
when that loss alone is switched on. Groups are the encoder's children (``ccaf``, ``patch_in``,
``cell_to_patch``, ``region_aggregator``, ``slide_aggregator``, ``projectors``, ``scale_embed``,
``resampler``, ``text_projection``), ``lora`` (the LM's adapter weights) and ``llm`` (the LM's
own weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pathmllm.models.hierarchy import HierarchyBatch, HierarchyConfig  # noqa: E402
from pathmllm.models.hierarchy.pipeline import SlidePipelineSpec  # noqa: E402
from pathmllm.models.hierarchy.slide_lm import HierarchicalSlideLM, load_causal_lm  # noqa: E402
from pathmllm.train.slide import (  # noqa: E402
    STAGE_LOSSES,
    SlideLossWeights,
    SlideTrainingModule,
    build_model,
    granularity_texts,
    load_config,
    resolve_spec,
    set_stage_trainable,
)

B, R, G, C = 4, 3, 2, 3  # slides, regions per slide, region grid side, cells per patch
P = G * G
PATCH_DIM, CELL_DIM = 8, 6

TEXTS = {
    "word": ["adenocarcinoma", "squamous", "benign", "necrosis"],
    "phrase": ["lung adenocarcinoma", "lung squamous cell carcinoma", "benign lung tissue", "extensive necrosis"],
    "sentence": ["Diagnosis: lung adenocarcinoma.", "Diagnosis: lung squamous cell carcinoma.",
                 "Diagnosis: benign lung tissue.", "Diagnosis: extensive necrosis."],
    "paragraph": ["Diagnosis: lung adenocarcinoma. Glands fill most fields.",
                  "Diagnosis: lung squamous cell carcinoma. Keratin pearls are seen.",
                  "Diagnosis: benign lung tissue. Alveoli are intact.",
                  "Diagnosis: extensive necrosis. Little viable tissue remains."],
}
PROMPTS = ["<slide>\nWhat is the diagnosis?\nAnswer: ", "Describe <slide> the tissue.",
           "<slide>\nWrite the pathology report for this slide.\nAnswer: ", "Is it malignant? <slide>"]
ANSWERS = ["lung adenocarcinoma", "squamous cell carcinoma of the lung", "benign lung tissue", "no"]

ENCODER_EARLY = ["ccaf", "cell_to_patch", "patch_in", "region_aggregator", "slide_aggregator"]

#: {case: {loss: top-level groups with a non-zero gradient}}; only the losses on by default
EXPECTED_FLOW: dict[str, dict[str, list[str]]] = {
    "1": {
        "contrastive": sorted(ENCODER_EARLY + ["projectors", "text_projection"]),
        "consistency": sorted(ENCODER_EARLY + ["projectors"]),
    },
    "2": {
        "lm": ["projectors", "resampler", "scale_embed"],
        "contrastive": ["projectors", "text_projection"],
        "consistency": ["projectors"],
    },
    "3-lora": {
        "lm": ["lora", "projectors", "resampler", "scale_embed"],
        "contrastive": ["projectors", "text_projection"],
        "consistency": ["projectors"],
    },
    "3-train_lm": {
        "lm": ["llm", "projectors", "resampler", "scale_embed"],
        "contrastive": ["projectors", "text_projection"],
        "consistency": ["projectors"],
    },
    "3-lora-train_encoder": {
        "lm": sorted(ENCODER_EARLY + ["lora", "projectors", "resampler", "scale_embed"]),
        "contrastive": sorted(ENCODER_EARLY + ["projectors", "text_projection"]),
        "consistency": sorted(ENCODER_EARLY + ["projectors"]),
    },
}

#: case -> (stage, lora, train_encoder, train_lm)
CASES: dict[str, tuple[int, bool, bool, bool]] = {
    "1": (1, False, False, False),
    "2": (2, False, False, False),
    "3-lora": (3, True, False, False),
    "3-train_lm": (3, False, False, True),
    "3-lora-train_encoder": (3, True, True, False),
}


def _hierarchy_config(llm_hidden: int) -> HierarchyConfig:
    return HierarchyConfig(cell_feature_dim=CELL_DIM, patch_feature_dim=PATCH_DIM, hidden_dim=32, num_heads=4,
                           ccaf_layers=1, region_layers=1, region_grid_size=G, llm_hidden_size=llm_hidden,
                           num_slide_tokens=4, resampler_layers=1, resampler_heads=4)


def _model(seed: int = 0) -> HierarchicalSlideLM:
    torch.manual_seed(seed)
    llm, tok = load_causal_lm("tiny-qwen2-lm", device="cpu", dtype="float32")
    torch.manual_seed(seed)
    return HierarchicalSlideLM(_hierarchy_config(int(llm.config.hidden_size)), llm, tok)


def _batch(seed: int = 0) -> HierarchyBatch:
    """4 slides; some cells masked (one patch without cells), regions of different sizes, one
    slide with a single region."""
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], -1)
    cell_mask = torch.rand(B, R, P, C, generator=gen) > 0.3
    cell_mask[..., 0] = True
    cell_mask[0, 0, 1] = False  # a patch without any cell
    patch_mask = torch.ones(B, R, P, dtype=torch.bool)
    patch_mask[0, 1, 2:] = False  # a region of 2 patches
    patch_mask[1, 0, 1:] = False  # a region of 1 patch
    patch_mask[2, 2, 3] = False  # a region of 3 patches
    region_mask = torch.ones(B, R, dtype=torch.bool)
    region_mask[1, 2] = False
    region_mask[3, 1:] = False  # a slide with a single region
    return HierarchyBatch(
        cell_features=torch.randn(B, R, P, C, CELL_DIM, generator=gen),
        cell_mask=cell_mask,
        patch_features=torch.randn(B, R, P, PATCH_DIM, generator=gen),
        patch_mask=patch_mask,
        patch_positions=grid.expand(B, R, P, 2).clone(),
        region_mask=region_mask,
        region_positions=torch.randint(0, 8, (B, R, 2), generator=gen),
    )


def _group(name: str) -> str:
    if name.startswith("encoder."):
        return name.split(".")[1]
    return "lora" if "lora_" in name else "llm"


def _case_model(case: str) -> tuple[HierarchicalSlideLM, int]:
    stage, lora, train_encoder, train_lm = CASES[case]
    model = _model()
    if lora:
        pytest.importorskip("peft")
        model.apply_lora(r=4, alpha=8)
    set_stage_trainable(model, stage, train_encoder=train_encoder, train_lm=train_lm)
    return model.train(), stage


def _gradient_groups(model: HierarchicalSlideLM, stage: int, loss: str) -> set[str]:
    """Run one step with only ``loss`` on; check frozen parameters stay without gradient; return
    the groups with a non-zero gradient."""
    model.zero_grad(set_to_none=True)
    weights = {k: (1.0 if k == loss else 0.0) for k in STAGE_LOSSES[stage]}
    module = SlideTrainingModule(model, weights, SlideLossWeights().scales, 0.07)
    lm = model.prepare_inputs(PROMPTS, ANSWERS)
    total, terms = module(_batch(), TEXTS, lm)
    assert set(terms) >= {loss}, terms
    assert not ({"lm", "contrastive", "consistency"} - {loss}) & set(terms), f"{loss} alone is on: {sorted(terms)}"
    assert torch.isfinite(total) and float(total.detach()) > 0
    total.backward()
    reached = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient from {loss}"
        elif p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            if p.grad.abs().sum() > 0:
                reached.add(_group(name))
    return reached


@pytest.fixture(scope="module")
def flow() -> dict[str, dict[str, list[str]]]:
    table: dict[str, dict[str, list[str]]] = {}
    for case in CASES:
        model, stage = _case_model(case)
        trainable_groups = {_group(n) for n, p in model.named_parameters() if p.requires_grad}
        table[case] = {}
        for loss, weight in STAGE_LOSSES[stage].items():
            if not weight:
                continue
            reached = _gradient_groups(model, stage, loss)
            # not inert: each loss that is on reaches at least one trainable parameter
            assert reached, f"stage {case}: {loss} is inert"
            assert reached <= trainable_groups, (case, loss, reached - trainable_groups)
            table[case][loss] = sorted(reached)
    print("\ngradient flow {case: {loss: groups}}:\n" + json.dumps(table, indent=1))
    return table


def test_gradient_flow_table(flow: dict[str, dict[str, list[str]]]) -> None:
    assert flow == EXPECTED_FLOW


def test_stage1_trains_encoder_from_both_losses_and_not_the_lm(flow: dict[str, dict[str, list[str]]]) -> None:
    assert set(flow["1"]) == {"contrastive", "consistency"}  # the LM loss is off in stage 1
    for group in ("ccaf", "region_aggregator", "slide_aggregator", "projectors", "text_projection"):
        assert group in flow["1"]["contrastive"], group
    assert {"ccaf", "projectors"} <= set(flow["1"]["consistency"])
    assert not {"llm", "lora"} & {g for groups in flow["1"].values() for g in groups}
    model, _ = _case_model("1")
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert not any(p.requires_grad for p in model.encoder.resampler.parameters())


def test_stage2_aligns_projectors_and_freezes_encoder(flow: dict[str, dict[str, list[str]]]) -> None:
    assert {"resampler", "projectors"} <= set(flow["2"]["lm"])
    assert {"projectors", "text_projection"} <= set(flow["2"]["contrastive"])
    reached = {g for groups in flow["2"].values() for g in groups}
    assert not reached & set(ENCODER_EARLY + ["llm", "lora"])
    model, _ = _case_model("2")
    for name in ENCODER_EARLY:
        assert not any(p.requires_grad for p in getattr(model.encoder, name).parameters()), name


def test_stage3_hierarchical_losses_are_not_inert(flow: dict[str, dict[str, list[str]]]) -> None:
    """The fix over the authors' release: the projectors stay trainable in stage 3, so the
    contrastive and consistency losses still move weights."""
    lora = flow["3-lora"]
    assert {"lora", "resampler"} <= set(lora["lm"]) and "llm" not in lora["lm"]
    assert "projectors" in lora["contrastive"] and "projectors" in lora["consistency"]
    assert "llm" in flow["3-train_lm"]["lm"]
    model, _ = _case_model("3-lora")
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)


def test_all_losses_off_is_an_error() -> None:
    model = _model()
    set_stage_trainable(model, 2)
    module = SlideTrainingModule(model, {"lm": 0.0, "contrastive": 0.0, "consistency": 0.0},
                                 SlideLossWeights().scales, 0.07)
    with pytest.raises(ValueError, match="every loss of this stage has weight 0"):
        module(_batch(), TEXTS, model.prepare_inputs(PROMPTS, ANSWERS))


def test_trainable_names_returned() -> None:
    model = _model()
    names = set_stage_trainable(model, 2)
    assert names == [n for n, p in model.named_parameters() if p.requires_grad]
    assert {_group(n) for n in names} == {"projectors", "resampler", "scale_embed", "text_projection"}


# --------------------------------------------------------------------------------------------
# texts and loss weights


def test_granularity_texts_from_report() -> None:
    report = ("Diagnosis: lung adenocarcinoma. The tissue covers 12 of 16 fields and is predominantly "
              "lung adenocarcinoma (9 fields).")
    t = granularity_texts(report)
    assert t["paragraph"] == report
    assert t["sentence"] == "Diagnosis: lung adenocarcinoma."
    assert t["phrase"] == "lung adenocarcinoma"
    assert t["word"] == "lung adenocarcinoma"
    # whitespace is normalised; the phrase stops at the first comma
    t = granularity_texts("  Diagnosis:  lung squamous cell carcinoma, keratinising.\n\nMore  text. ")
    assert t["paragraph"] == "Diagnosis: lung squamous cell carcinoma, keratinising. More text."
    assert t["sentence"] == "Diagnosis: lung squamous cell carcinoma, keratinising."
    assert t["phrase"] == "lung squamous cell carcinoma"
    # no label, single sentence
    t = granularity_texts("Benign lung tissue")
    assert t == {"paragraph": "Benign lung tissue", "sentence": "Benign lung tissue",
                 "phrase": "Benign lung tissue", "word": "Benign lung tissue"}


def test_granularity_texts_captions_override() -> None:
    report = "Diagnosis: lung adenocarcinoma. The tissue covers 12 of 16 fields."
    t = granularity_texts(report, {"word": "adenocarcinoma", "phrase": "lung adenocarcinoma (acinar)",
                                   "sentence": "", "other": "ignored"})
    assert t["word"] == "adenocarcinoma"
    assert t["phrase"] == "lung adenocarcinoma (acinar)"
    assert t["sentence"] == "Diagnosis: lung adenocarcinoma."  # empty caption does not override
    assert t["paragraph"] == report
    assert "other" not in t
    assert granularity_texts(report, None) == granularity_texts(report, {})


def test_loss_weights_resolved() -> None:
    for stage in (1, 2, 3):
        assert SlideLossWeights().resolved(stage) == STAGE_LOSSES[stage]
    w = SlideLossWeights(contrastive=0, lm=2)
    assert w.resolved(1) == {"lm": 2.0, "contrastive": 0.0, "consistency": 0.5}
    assert w.resolved(3) == {"lm": 2.0, "contrastive": 0.0, "consistency": 0.1}
    assert all(isinstance(v, float) for v in w.resolved(2).values())
    # resolving never changes the stage defaults
    assert STAGE_LOSSES[1] == {"lm": 0.0, "contrastive": 1.0, "consistency": 0.5}
    cfg = load_config(None, ["data.train=qa.jsonl", "data.stores=stores", "losses.consistency=0.25"])
    assert cfg.losses.resolved(cfg.stage) == {"lm": 0.0, "contrastive": 1.0, "consistency": 0.25}


# --------------------------------------------------------------------------------------------
# config errors

DATA = ["data.train=qa.jsonl", "data.stores=stores"]


def test_load_config_defaults_and_errors() -> None:
    cfg = load_config(None, DATA)
    assert cfg.stage == 1 and cfg.llm == "tiny-qwen2-lm" and cfg.init is None
    assert load_config(None, DATA + ["init=m"], stage=3).stage == 3
    with pytest.raises(ValueError, match=r"stage 2 .*set init="):
        load_config(None, DATA, stage=2)
    with pytest.raises(ValueError, match="init"):
        load_config(None, DATA + ["stage=3"])
    with pytest.raises(ValueError, match="either init .* or llm"):
        load_config(None, DATA + ["init=m", "llm=tiny-qwen2-lm"], stage=2)
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 4"):
        load_config(None, DATA, stage=4)
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 0"):
        load_config(None, DATA + ["stage=0"])
    with pytest.raises(ValueError, match="data.train .* and data.stores .* are required"):
        load_config(None, ["data.train=qa.jsonl"])
    with pytest.raises(ValueError, match="batch_size >= 2"):
        load_config(None, DATA + ["optim.batch_size=1"])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slide-model") / "model"
    _model().save_pretrained(folder)
    SlidePipelineSpec().save(folder)
    return folder


def test_init_checkpoint_matches_config(saved_model: Path) -> None:
    cfg = load_config(None, DATA + [f"init={saved_model}", "hierarchy.hidden_dim=32", "pipeline.encoder=handcrafted"],
                      stage=3)
    spec = resolve_spec(cfg)
    assert spec == SlidePipelineSpec()
    model = build_model(cfg, spec, PATCH_DIM)
    assert isinstance(model, HierarchicalSlideLM) and model.config == _model().config
    saved_weights = _model().encoder.state_dict()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, saved_weights[k]), k


def test_init_checkpoint_mismatch_names_the_key(saved_model: Path) -> None:
    cfg = load_config(None, DATA + [f"init={saved_model}", "hierarchy.hidden_dim=64"], stage=3)
    with pytest.raises(ValueError, match=r"hierarchy\.hidden_dim: config 64, checkpoint 32") as info:
        build_model(cfg, resolve_spec(cfg), PATCH_DIM)
    assert str(saved_model) in str(info.value)
    cfg = load_config(None, DATA + [f"init={saved_model}", "pipeline.encoder=uni"], stage=3)
    with pytest.raises(ValueError, match=r"pipeline\.encoder: config 'uni', checkpoint 'handcrafted'"):
        resolve_spec(cfg)
    cfg = load_config(None, DATA + [f"init={saved_model}", "pipeline.region_size=2", "pipeline.patch_size=128"],
                      stage=2)
    with pytest.raises(ValueError, match=r"pipeline\.region_size: config 2, checkpoint 16; "
                                         r"pipeline\.patch_size: config 128, checkpoint 256"):
        resolve_spec(cfg)
    cfg = load_config(None, DATA + [f"init={saved_model}", "hierarchy.hiden_dim=32"], stage=3)
    with pytest.raises(ValueError, match=r"hierarchy\.hiden_dim is not a hierarchy field"):
        build_model(cfg, resolve_spec(cfg), PATCH_DIM)
    cfg = load_config(None, DATA + [f"init={saved_model}"], stage=3)
    with pytest.raises(ValueError, match=r"reads 8-dim patch features but the stores hold 16-dim"):
        build_model(cfg, resolve_spec(cfg), 16)


def test_new_model_rejects_data_dims_in_config() -> None:
    cfg = load_config(None, DATA + ["hierarchy.patch_feature_dim=16", "hierarchy.hidden_dim=32"])
    with pytest.raises(ValueError, match=r"hierarchy\.patch_feature_dim=16 but the data / LM give 8"):
        build_model(cfg, resolve_spec(cfg), PATCH_DIM)
    cfg = load_config(None, DATA + ["pipeline.encodr=x"])
    with pytest.raises(ValueError, match="pipeline: .*known keys"):
        resolve_spec(cfg)
