"""Tiny random-weight presets of the supported VLM families, built entirely in code.

A preset is a real Hugging Face model of a supported architecture (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, LLaVA, LLaVA-NeXT) with hidden size 64, two layers and random weights, plus a
processor whose tokenizer is a byte-level BPE trained here with the ``tokenizers`` library.
Nothing is downloaded. Presets serve tests, CPU demos and the "does it learn" recipes; they go
through the same code as a real checkpoint (``save_preset`` writes a standard Hugging Face
folder that :func:`pathmllm.models.backbone.load_backbone` reads back).

Sizes: ``tiny-qwen2-vl`` has about 1.1 M parameters (4.4 MB in float32).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Words the tiny tokenizers are trained on: prompt templates, pathology vocabulary, and the
#: commonest English words, so that captions split into few tokens. Byte-level BPE covers any
#: other text byte by byte.
_CORPUS = """
Summarize above image in one word: Summarize above sentence in one word:
Summarize above image and sentence in one word: Represent the given image.
You are a helpful assistant. user assistant system USER: ASSISTANT:
a an the of in on with and or is are was were this that these those there here it its
for from by to as at be been has have had not no yes which who what where when how why
image photo picture tile patch region slide whole slide image microscopy micrograph
H&E hematoxylin eosin stain stained staining IHC immunohistochemistry tissue section
histology histopathology pathology pathologist cytology specimen biopsy resection
lung colon breast prostate kidney liver skin stomach brain lymph node bone
adenocarcinoma carcinoma squamous cell carcinoma benign malignant tumor tumour normal
cancer neoplasm metastasis invasive in situ grade stage necrosis inflammation fibrosis
stroma stromal epithelium epithelial gland glandular mucosa mucus mucin muscle smooth
adipose fat debris background lymphocytes lymphocyte immune cells nuclei nucleus nuclear
mitosis mitotic pleomorphism atypia keratin keratinization pearls alveoli alveolar
bronchus bronchial vessel blood polyp colonoscopy endoscopy lesion mask segment
showing shows shown contains containing consistent with suggestive of diagnosis
high low medium large small dense sparse pink purple blue red white dark light
"""

_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>\n{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyPreset:
    """One registered tiny preset."""

    name: str
    family: str
    description: str


PRESETS: dict[str, TinyPreset] = {
    p.name: p
    for p in (
        TinyPreset("tiny-qwen2-vl", "qwen2_vl", "Qwen2-VL architecture, hidden 64, 2 layers, random weights"),
        TinyPreset("tiny-qwen2.5-vl", "qwen2_5_vl", "Qwen2.5-VL architecture, hidden 64, 2 layers, random weights"),
        TinyPreset("tiny-qwen3-vl", "qwen3_vl", "Qwen3-VL architecture, hidden 64, 2 layers, random weights"),
        TinyPreset("tiny-llava", "llava", "LLaVA-1.5 architecture (CLIP tower + Llama), hidden 64, random weights"),
        TinyPreset("tiny-llava-next", "llava_next", "LLaVA-NeXT architecture (any-resolution tiles), hidden 64"),
    )
}


def build_tokenizer(family: str, vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on :data:`_CORPUS`, wrapped for transformers.

    Returns a ``PreTrainedTokenizerFast`` with the family's special tokens (Qwen's
    ``<|im_start|>`` / ``<|image_pad|>`` …, or LLaVA's ``<s>`` / ``<image>``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _QWEN_SPECIALS if family.startswith("qwen") else _LLAVA_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    if family.startswith("qwen"):
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                  "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
        )
    fast.padding_side = "left"
    return fast


def _qwen_model_and_processor(family: str, tokenizer: Any, hidden: int, layers: int) -> tuple[Any, Any]:
    import transformers as tf

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    head_dim = 16
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim, num_key_value_heads=max(1, hidden // head_dim // 2),
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    if family == "qwen3_vl":
        text.update(head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                        "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        vision = dict(depth=layers, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                      num_position_embeddings=64, deepstack_visual_indexes=[0])
        config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
        model = tf.Qwen3VLForConditionalGeneration(config)
        patch = 16
        image_processor = tf.Qwen2VLImageProcessor(
            patch_size=patch, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128},
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        proc_cls = tf.Qwen3VLProcessor
        video_processor = tf.Qwen3VLVideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
    else:
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
        if family == "qwen2_5_vl":
            vision = dict(depth=layers, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                          window_size=56, fullatt_block_indexes=[layers - 1])
            config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
            proc_cls = tf.Qwen2_5_VLProcessor
        else:
            vision = dict(depth=layers, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
            model = tf.Qwen2VLForConditionalGeneration(config)
            proc_cls = tf.Qwen2VLProcessor
        image_processor = tf.Qwen2VLImageProcessor(
            patch_size=14, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": 28 * 28, "longest_edge": 112 * 112})
        video_processor = tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = proc_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def _llava_model_and_processor(family: str, tokenizer: Any, hidden: int, layers: int) -> tuple[Any, Any]:
    import transformers as tf

    image_size, patch = 56, 14
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=32)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    common = dict(vision_config=vision, text_config=text, image_token_id=image_token_id,
                  vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    if family == "llava_next":
        pinpoints = [[image_size, image_size * 2], [image_size * 2, image_size], [image_size * 2, image_size * 2]]
        config = tf.LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        model = tf.LlavaNextForConditionalGeneration(config)
        image_processor = tf.LlavaNextImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints)
        processor = tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                          chat_template=LLAVA_CHAT_TEMPLATE)
    else:
        config = tf.LlavaConfig(**common)
        model = tf.LlavaForConditionalGeneration(config)
        image_processor = tf.CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
        processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                      chat_template=LLAVA_CHAT_TEMPLATE)
    return model, processor


def build_tiny(name: str, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> tuple[Any, Any]:
    """Build preset ``name`` in memory: ``(model, processor)``, float32, eval mode, seeded."""
    import torch

    if name not in PRESETS:
        raise KeyError(f"unknown tiny preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    family = PRESETS[name].family
    tokenizer = build_tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family.startswith("qwen"):
            model, processor = _qwen_model_and_processor(family, tokenizer, hidden, layers)
        else:
            model, processor = _llava_model_and_processor(family, tokenizer, hidden, layers)
    model.config.name_or_path = name
    model.eval()
    return model, processor


def save_preset(name: str, folder: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write preset ``name`` as a standard Hugging Face folder (config, safetensors, processor)."""
    model, processor = build_tiny(name, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
