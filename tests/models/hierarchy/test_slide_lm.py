"""HierarchicalSlideLM: slide-token splicing, loss, overfit, gradients, generate, save/load, LoRA, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pathmllm.models.hierarchy import HierarchyBatch, HierarchyConfig  # noqa: E402
from pathmllm.models.hierarchy.slide_lm import HierarchicalSlideLM  # noqa: E402
from pathmllm.models.tiny_lm import build_tiny_lm  # noqa: E402

B, R, G, C = 2, 3, 2, 3
P = G * G
N = 4  # slide tokens


def _config(llm_hidden: int = 64) -> HierarchyConfig:
    return HierarchyConfig(cell_feature_dim=6, patch_feature_dim=16, hidden_dim=32, num_heads=4, ccaf_layers=1,
                           region_layers=1, region_grid_size=G, llm_hidden_size=llm_hidden, num_slide_tokens=N,
                           resampler_layers=1, resampler_heads=4)


def _batch(seed: int = 0, b: int = B) -> HierarchyBatch:
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], -1)
    region_mask = torch.ones(b, R, dtype=torch.bool)
    region_mask[-1, -1] = False
    return HierarchyBatch(
        cell_features=torch.randn(b, R, P, C, 6, generator=gen),
        cell_mask=torch.ones(b, R, P, C, dtype=torch.bool),
        patch_features=torch.randn(b, R, P, 16, generator=gen),
        patch_mask=torch.ones(b, R, P, dtype=torch.bool),
        patch_positions=grid.expand(b, R, P, 2).clone(),
        region_mask=region_mask,
    )


def _model(seed: int = 0, **lm_kwargs: int) -> HierarchicalSlideLM:
    llm, tok = build_tiny_lm(seed=seed, **lm_kwargs)
    torch.manual_seed(seed)
    return HierarchicalSlideLM(_config(), llm, tok)


PROMPTS = ["<slide>\nWhat is the diagnosis?", "Describe <slide> the tissue"]
ANSWERS = ["adenocarcinoma", "normal colon mucosa"]


def test_shapes_and_slide_positions() -> None:
    model = _model().eval()
    enc = model.prepare_inputs(PROMPTS, ANSWERS)
    t = enc["input_ids"].shape[1]
    out = model(_batch(), **enc)
    vocab = model.llm.config.vocab_size
    assert out.logits.shape == (B, t - 1 + N, vocab)
    assert torch.isfinite(out.loss)
    ins = out.inputs
    assert ins.inputs_embeds.shape == (B, t - 1 + N, 64)
    for b in range(B):
        p = int((enc["input_ids"][b] == model.slide_token_id).nonzero()[0, 0])
        expect = torch.zeros(t - 1 + N, dtype=torch.bool)
        expect[p:p + N] = True
        assert torch.equal(ins.slide_mask[b], expect)
        assert torch.allclose(ins.inputs_embeds[b, p:p + N], out.hierarchy.slide_tokens[b])
        # text around the placeholder keeps its embeddings and order
        emb = model.llm.get_input_embeddings()(enc["input_ids"][b])
        assert torch.allclose(ins.inputs_embeds[b, :p], emb[:p])
        assert torch.allclose(ins.inputs_embeds[b, p + N:], emb[p + 1:])
        assert (ins.labels[b, p:p + N] == -100).all()
        assert torch.equal(ins.labels[b, p + N:], enc["labels"][b, p + 1:])
        assert torch.equal(ins.attention_mask[b, p + N:], enc["attention_mask"][b, p + 1:])
        assert (ins.attention_mask[b, p:p + N] == 1).all()
    # labels: prompt masked, answer (+ EOS) kept
    n_prompt = len(model.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"])
    assert (enc["labels"][0, :n_prompt] == -100).all()
    assert enc["labels"][0, n_prompt:][enc["attention_mask"][0, n_prompt:].bool()][-1] == model.tokenizer.eos_token_id


def test_gradients_reach_encoder_and_lm() -> None:
    model = _model().train()
    out = model(_batch(), **model.prepare_inputs(PROMPTS, ANSWERS))
    out.loss.backward()
    for name in ("ccaf", "patch_in", "region_aggregator", "slide_aggregator", "resampler"):
        grads = [p.grad for p in getattr(model.encoder, name).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert model.llm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.llm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_overfits_tiny_example() -> None:
    model = _model().train()
    batch = _batch()
    enc = model.prepare_inputs(PROMPTS, ANSWERS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(batch, **enc).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_generate_greedy_matches_forward_and_padding() -> None:
    model = _model().eval()
    batch = _batch()
    texts = model.generate(batch, PROMPTS, max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # first generated token = argmax of the forward logits at the last prompt position
    for b in range(B):
        single = HierarchyBatch(**{k: v[b:b + 1] if v is not None else None for k, v in vars(batch).items()})
        enc = model.prepare_inputs([PROMPTS[b]])
        with torch.no_grad():
            logits = model(single, **enc).logits
        first = model.tokenizer.decode([int(logits[0, -1].argmax())], skip_special_tokens=True)
        alone = model.generate(single, [PROMPTS[b]], max_new_tokens=5)[0]
        assert alone == texts[b]  # left padding in the batch does not change the answer
        assert alone.startswith(first)


def test_context_too_long_is_clear_error() -> None:
    model = _model(max_positions=32).eval()
    long_prompt = "<slide> " + "lung " * 40
    with pytest.raises(ValueError, match=r"too long.*context is 32.*at most"):
        model(_batch(b=1), **model.prepare_inputs([long_prompt]))
    with pytest.raises(ValueError, match=r"too long.*new tokens"):
        model.generate(_batch(b=1), ["<slide> lung"], max_new_tokens=30)


def test_placeholder_errors() -> None:
    model = _model().eval()
    with pytest.raises(ValueError, match="holds 0 <slide>"):
        model.prepare_inputs(["no placeholder"])
    with pytest.raises(ValueError, match="holds 2 <slide>"):
        model.prepare_inputs(["<slide> <slide>"])
    ids = model.tokenizer(["what is it"], return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="exactly one placeholder"):
        model(_batch(b=1), ids)


def test_hidden_size_mismatch_is_clear_error() -> None:
    llm, tok = build_tiny_lm()
    with pytest.raises(ValueError, match=r"hidden size is 64 but HierarchyConfig.llm_hidden_size is 32"):
        HierarchicalSlideLM(_config(llm_hidden=32), llm, tok)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _model(seed=3).eval()
    # perturb the encoder so defaults cannot pass the check by accident
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01)
    batch = _batch(1)
    enc = model.prepare_inputs(PROMPTS, ANSWERS)
    with torch.no_grad():
        ref = model(batch, **enc)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "llm" / "config.json").is_file()
    assert (tmp_path / "m" / "llm" / "tokenizer.json").is_file()
    assert (tmp_path / "m" / "hierarchy.safetensors").is_file()
    loaded = HierarchicalSlideLM.from_pretrained(tmp_path / "m", device="cpu").eval()
    assert loaded.config == model.config
    assert loaded.slide_token_id == model.slide_token_id
    with torch.no_grad():
        again = loaded(batch, **enc)
    assert torch.equal(again.logits, ref.logits)
    assert torch.equal(again.loss, ref.loss)
    assert loaded.generate(batch, PROMPTS, 4) == model.generate(batch, PROMPTS, 4)


def test_load_with_mismatched_hidden_size(tmp_path: Path) -> None:
    import json

    model = _model()
    folder = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "hierarchy_config.json").read_text())
    cfg["llm_hidden_size"] = 32
    (folder / "hierarchy_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"llm_hidden_size 32 but the language model .* hidden size 64"):
        HierarchicalSlideLM.from_pretrained(folder, device="cpu")
    from pathmllm.models.backbone import CheckpointError

    with pytest.raises(CheckpointError, match="hierarchy.safetensors is missing"):
        (folder / "hierarchy.safetensors").unlink()
        HierarchicalSlideLM.from_pretrained(folder, device="cpu")


def test_lora_trains_only_adapters_and_encoder(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    model = _model().apply_lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(n.startswith("encoder.") or "lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable)
    assert {n for n, _ in model.encoder.named_parameters()} <= {n.removeprefix("encoder.") for n in trainable}
    out = model(_batch(), **model.prepare_inputs(PROMPTS, ANSWERS))
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    # saving merges the adapters into a plain LM folder that loads back
    model.eval()
    with torch.no_grad():
        ref = model(_batch(), **model.prepare_inputs(PROMPTS)).logits
    loaded = HierarchicalSlideLM.from_pretrained(model.save_pretrained(tmp_path / "lora"), device="cpu").eval()
    with torch.no_grad():
        again = loaded(_batch(), **loaded.prepare_inputs(PROMPTS)).logits
    assert torch.allclose(again, ref, atol=1e-5)


def test_unsupported_or_missing_lm_folder(tmp_path: Path) -> None:
    import json

    from pathmllm.models.backbone import CheckpointError, UnsupportedModelError

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="'bert' is not a supported causal LM.*qwen2"):
        HierarchicalSlideLM.from_lm(folder, _config(), device="cpu")
    with pytest.raises(CheckpointError, match="never downloads"):
        HierarchicalSlideLM.from_lm(tmp_path / "absent", _config(), device="cpu")
    model = HierarchicalSlideLM.from_lm("tiny-qwen2-lm", _config(), device="cpu")
    assert model.num_slide_tokens == N and model.max_positions == 512
