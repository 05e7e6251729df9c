"""GroundingLM.save_pretrained / from_pretrained: exact round trips (plain, MoE, LoRA merged,
multi-token regions), strict loading with errors that name what is wrong, no mutation on save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from pathmllm.models.backbone import CheckpointError, load_backbone  # noqa: E402
from pathmllm.models.grounding.model import SEG_TOKEN, GroundingLM  # noqa: E402
from pathmllm.models.grounding.saving import (  # noqa: E402
    GROUNDING_CONFIG,
    WEIGHTS,
    is_grounding_folder,
    merged_state_dict,
)
from pathmllm.models.grounding.seg import MaskDecoderWrapper, build_tiny_sam  # noqa: E402

H, W = 56, 70
TOL = 1e-5


def _model(region_mode: str = "single", region_tokens: int = 1, seed: int = 0) -> GroundingLM:
    torch.manual_seed(seed)
    bb = load_backbone("tiny-qwen2-vl", device="cpu", dtype="float32")
    sam = MaskDecoderWrapper(build_tiny_sam(seed=seed))
    return GroundingLM(bb, sam, region_mode=region_mode, region_tokens=region_tokens).eval()


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[top:top + h, left:left + w] = True
    return m


def _batch() -> dict:
    """Two rows: a region question and a grounding answer with its target mask."""
    return {
        "images": [_image(0), _image(1)],
        "prompts": ["what is in <region>?", "segment the polyp"],
        "answers": ["a polyp", f"here {SEG_TOKEN}"],
        "region_masks": [_mask(8, 10, 20, 30), None],
        "target_masks": [None, _mask(5, 30, 25, 30)],
    }


@torch.no_grad()
def _outputs(model: GroundingLM) -> dict[str, torch.Tensor]:
    """The total loss, its terms and the mask logits of the grounding row (eval mode)."""
    model.eval()
    b = _batch()
    total, terms = model(b["images"], b["prompts"], b["answers"], b["region_masks"], b["target_masks"])
    return {"total": total.detach().clone(), **{k: v.clone() for k, v in terms.items()}}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = TOL) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, a[k], b[k])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundingLM, Path]:
    model = _model()
    folder = tmp_path_factory.mktemp("ground-save") / "plain"
    model.save_pretrained(folder)
    return model, folder


def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ round trips


def test_layout(plain: tuple[GroundingLM, Path]) -> None:
    model, folder = plain
    assert is_grounding_folder(folder)
    assert (folder / WEIGHTS).is_file() and (folder / "backbone" / "config.json").is_file()
    assert (folder / "sam" / "config.json").is_file()
    cfg = json.loads((folder / GROUNDING_CONFIG).read_text())
    assert cfg["format"] == "pathmllm-grounding" and cfg["region_mode"] == "single" and cfg["moe"] is None
    assert not list(folder.glob("*.tmp"))


def test_round_trip_same_loss(plain: tuple[GroundingLM, Path]) -> None:
    model, folder = plain
    before = _outputs(model)
    loaded = GroundingLM.from_pretrained(folder, device="cpu", dtype="float32")
    assert not loaded.training
    after = _outputs(loaded)
    _assert_same(before, after)
    # the added tokens survive: the saved tokenizer maps them to the same ids
    assert (loaded.seg_token_id, loaded.region_feat_id) == (model.seg_token_id, model.region_feat_id)
    # every tensor equal
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_ties_embeddings_again(plain: tuple[GroundingLM, Path]) -> None:
    model, folder = plain
    loaded = GroundingLM.from_pretrained(folder, device="cpu", dtype="float32")
    cfg = loaded.model.config
    tied = getattr(cfg, "tie_word_embeddings", False) or getattr(getattr(cfg, "text_config", None),
                                                                 "tie_word_embeddings", False)
    if not tied:
        pytest.skip("the tiny backbone does not tie its embeddings")
    assert loaded.model.get_output_embeddings().weight.data_ptr() == \
        loaded.model.get_input_embeddings().weight.data_ptr()


def test_generate_same_after_round_trip(plain: tuple[GroundingLM, Path]) -> None:
    model, folder = plain
    loaded = GroundingLM.from_pretrained(folder, device="cpu", dtype="float32")
    a = model.generate(_image(3), "what is in <region>?", _mask(4, 4, 20, 20), max_new_tokens=3)
    b = loaded.generate(_image(3), "what is in <region>?", _mask(4, 4, 20, 20), max_new_tokens=3)
    assert a[0] == b[0]
    assert (a[1] is None) == (b[1] is None)
    if a[1] is not None:
        assert torch.equal(a[1], b[1])


def test_region_mode_multi_round_trip(tmp_path: Path) -> None:
    model = _model(region_mode="multi", region_tokens=3, seed=1)
    before = _outputs(model)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / GROUNDING_CONFIG).read_text())
    assert cfg["region_mode"] == "multi" and cfg["region_tokens"] == 3
    loaded = GroundingLM.from_pretrained(tmp_path / "m", device="cpu", dtype="float32")
    assert loaded.region_mode == "multi" and loaded.region_tokens == 3
    assert loaded.region_encoder.num_heads == model.region_encoder.num_heads
    _assert_same(before, _outputs(loaded))


def _randomise_routers(model: GroundingLM, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.moe_modules():
            m.router.weight.copy_(torch.randn(m.router.weight.shape, generator=g))
            # make the two experts differ so routing matters
            for p in m.experts[1].parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_moe_round_trip(tmp_path: Path) -> None:
    model = _model(seed=2)
    model.make_moe("all", num_experts=2, top_k=1)
    _randomise_routers(model, 5)
    before = _outputs(model)
    routes = [m.last_expert_index.clone() for m in model.moe_modules()]
    assert any(bool((r == 1).any()) and bool((r == 0).any()) for r in routes), "routing should be mixed"
    model.save_pretrained(tmp_path / "moe")
    cfg = json.loads((tmp_path / "moe" / GROUNDING_CONFIG).read_text())
    assert cfg["moe"] == model.moe_layout and cfg["moe"]["num_experts"] == 2
    loaded = GroundingLM.from_pretrained(tmp_path / "moe", device="cpu", dtype="float32")
    assert loaded.moe_layout == model.moe_layout
    assert len(loaded.moe_modules()) == len(model.moe_modules())
    _assert_same(before, _outputs(loaded))
    for r, m in zip(routes, loaded.moe_modules(), strict=True):
        assert torch.equal(r, m.last_expert_index)


def _inject_lora(model: GroundingLM, targets: str) -> None:
    from peft import LoraConfig, get_peft_model

    get_peft_model(model.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                           init_lora_weights=False))


LM_ALL = r"^model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(experts\.\d+\.)?(q_proj|v_proj|o_proj|gate_proj|down_proj)$"


def test_lora_merged_on_save_matches_live_model(tmp_path: Path) -> None:
    model = _model(seed=3)
    plain_out = _outputs(model)
    _inject_lora(model, LM_ALL)
    n_lora = sum(1 for k in model.state_dict() if "lora_" in k)
    assert n_lora > 0
    live = _outputs(model)
    # non-zero adapters: the outputs really changed
    assert not torch.allclose(plain_out["lm"], live["lm"], atol=1e-4)
    state_before = _state(model)
    model.save_pretrained(tmp_path / "lora")
    # the live model is unchanged by saving (not merged in place, adapters kept)
    state_after = model.state_dict()
    assert state_before.keys() == state_after.keys()
    for k, v in state_before.items():
        assert torch.equal(v, state_after[k]), k
    _assert_same(live, _outputs(model))
    # the saved model has no adapter keys and gives the live model's outputs
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / WEIGHTS), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora_" in k or "base_layer" in k]
    loaded = GroundingLM.from_pretrained(tmp_path / "lora", device="cpu", dtype="float32")
    _assert_same(live, _outputs(loaded), tol=5e-5)


def test_moe_with_lora_merged(tmp_path: Path) -> None:
    model = _model(seed=4)
    model.make_moe([0], num_experts=2)
    _randomise_routers(model, 6)
    _inject_lora(model, LM_ALL)
    assert any("experts.1.gate_proj.lora_A" in k for k in model.state_dict())
    live = _outputs(model)
    model.save_pretrained(tmp_path / "moe-lora")
    loaded = GroundingLM.from_pretrained(tmp_path / "moe-lora", device="cpu", dtype="float32")
    assert loaded.moe_layout == {"layers": [0], "num_experts": 2, "top_k": 1}
    _assert_same(live, _outputs(loaded), tol=5e-5)


def test_merged_state_dict_does_not_mutate() -> None:
    model = _model(seed=5)
    _inject_lora(model, r"^model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)$")
    before = _state(model)
    merged = merged_state_dict(model)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # merged: base + delta for the LoRA layers, the adapter keys dropped, copies (not views)
    assert not [k for k in merged if "lora_" in k or "base_layer" in k]
    name = next(k for k in before if k.endswith("q_proj.base_layer.weight"))
    prefix = name[: -len("base_layer.weight")]
    layer = model.get_submodule(prefix[:-1])
    expected = before[name] + layer.get_delta_weight("default")
    assert torch.allclose(merged[prefix + "weight"], expected, atol=1e-6)
    assert not torch.allclose(merged[prefix + "weight"], before[name])
    some = next(k for k in merged if k.startswith("seg_head."))
    merged[some].add_(1.0)
    assert torch.equal(model.state_dict()[some], before[some])


# ------------------------------------------------------------------------------------------ broken folders


@pytest.mark.parametrize("missing", [GROUNDING_CONFIG, WEIGHTS, "sam/config.json", "backbone/config.json"])
def test_missing_file_is_named(plain: tuple[GroundingLM, Path], tmp_path: Path, missing: str) -> None:
    folder = _copy_folder(plain[1], tmp_path / "copy")
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        GroundingLM.from_pretrained(folder, device="cpu")


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no grounding model folder"):
        GroundingLM.from_pretrained(tmp_path / "nothing", device="cpu")


def test_wrong_format(plain: tuple[GroundingLM, Path], tmp_path: Path) -> None:
    folder = _copy_folder(plain[1], tmp_path / "copy")
    cfg = json.loads((folder / GROUNDING_CONFIG).read_text())
    cfg["format"] = "something-else"
    (folder / GROUNDING_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="something-else"):
        GroundingLM.from_pretrained(folder, device="cpu")


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


def test_extra_key_is_named(plain: tuple[GroundingLM, Path], tmp_path: Path) -> None:
    folder = _copy_folder(plain[1], tmp_path / "copy")
    _rewrite(folder, lambda s: s.__setitem__("seg_head.bogus_weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected \['seg_head\.bogus_weight'\]"):
        GroundingLM.from_pretrained(folder, device="cpu")


def test_missing_key_is_named(plain: tuple[GroundingLM, Path], tmp_path: Path) -> None:
    folder = _copy_folder(plain[1], tmp_path / "copy")
    holder: list[str] = []

    def drop(state: dict) -> None:
        key = sorted(k for k in state if k.startswith("region_encoder."))[0]
        holder.append(key)
        del state[key]

    _rewrite(folder, drop)
    with pytest.raises(CheckpointError, match="missing") as info:
        GroundingLM.from_pretrained(folder, device="cpu")
    assert holder[0] in str(info.value)


def test_moe_layout_without_expert_weights(plain: tuple[GroundingLM, Path], tmp_path: Path) -> None:
    """grounding.json says MoE but the weights are a plain model's: a mismatch naming keys."""
    folder = _copy_folder(plain[1], tmp_path / "copy")
    cfg = json.loads((folder / GROUNDING_CONFIG).read_text())
    cfg["moe"] = {"layers": [0], "num_experts": 2, "top_k": 1}
    (folder / GROUNDING_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="experts"):
        GroundingLM.from_pretrained(folder, device="cpu")
