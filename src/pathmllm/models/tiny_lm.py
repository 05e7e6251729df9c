"""Tiny random-weight text-only causal LMs, built in code (tests and CPU demos of the slide LLM).

``tiny-qwen2-lm`` is a real ``Qwen2ForCausalLM`` (hidden 64, 2 layers) with the byte-level BPE
tokenizer of :func:`pathmllm.models.tiny.build_tokenizer` plus a ``<slide>`` placeholder token.
Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from pathmllm.models.tiny import QWEN_CHAT_TEMPLATE, build_tokenizer

__all__ = ["LM_PRESETS", "SLIDE_TOKEN", "build_tiny_lm"]

#: the placeholder the slide tokens replace in a prompt
SLIDE_TOKEN = "<slide>"

#: preset name -> description
LM_PRESETS: dict[str, str] = {
    "tiny-qwen2-lm": "Qwen2 causal LM, hidden 64, 2 layers, random weights, <slide> token",
}


def build_tiny_lm(
    name: str = "tiny-qwen2-lm",
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    max_positions: int = 512,
) -> tuple[Any, Any]:
    """Build LM preset ``name``: ``(Qwen2ForCausalLM, PreTrainedTokenizerFast)``, float32, eval mode."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if name not in LM_PRESETS:
        raise KeyError(f"unknown tiny LM preset {name!r}; presets: {', '.join(sorted(LM_PRESETS))}")
    tokenizer = build_tokenizer("qwen2_vl")
    tokenizer.add_special_tokens({"additional_special_tokens": [SLIDE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    head_dim = 16
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim, num_key_value_heads=max(1, hidden // head_dim // 2),
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.config.name_or_path = name
    model.eval()
    return model, tokenizer
