"""The hierarchical slide LLM (MLLM-HWSI): slide encoder + a Hugging Face causal LM.

A prompt holds one ``<slide>`` placeholder token. :class:`HierarchicalSlideLM` encodes the slide
with :class:`~pathmllm.models.hierarchy.HierarchicalSlideEncoder` into ``num_slide_tokens``
tokens of the LM's hidden size and splices them in place of the placeholder::

    input_ids  (B, T)  with one <slide> per row
        → inputs_embeds (B, T - 1 + N, L): text embeddings, the placeholder replaced by the N
          slide tokens; attention_mask expanded with ones, labels with -100 on slide tokens.

The LM is any ``AutoModelForCausalLM`` from a local folder (Qwen2 / Qwen2.5 / Qwen3, Llama,
Mistral families) or the in-code preset ``tiny-qwen2-lm``; its hidden size must equal
``HierarchyConfig.llm_hidden_size``. Saved folders look like::

    folder/llm/                    standard Hugging Face LM folder (config, safetensors, tokenizer)
    folder/hierarchy.safetensors   slide encoder weights
    folder/hierarchy_config.json   HierarchyConfig as JSON
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pathmllm.models.hierarchy.config import HierarchyConfig
from pathmllm.models.hierarchy.encoder import (
    HierarchicalSlideEncoder,
    HierarchyBatch,
    HierarchyOutput,
)
from pathmllm.utils.optional import require

log = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_LM_FAMILIES",
    "HierarchicalSlideLM",
    "SlideInputs",
    "SlideLMOutput",
    "load_causal_lm",
]

#: model_type in config.json -> human name, for the text-only LMs the slide model accepts
SUPPORTED_LM_FAMILIES: dict[str, str] = {
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
    "llama": "Llama",
    "mistral": "Mistral",
}

HIERARCHY_WEIGHTS = "hierarchy.safetensors"
HIERARCHY_CONFIG = "hierarchy_config.json"
LLM_FOLDER = "llm"


@dataclass
class SlideInputs:
    """Text + slide inputs ready for the LM (``T' = T - 1 + num_slide_tokens``)."""

    inputs_embeds: Tensor
    """``(B, T', L)`` text embeddings with the slide tokens spliced in."""
    attention_mask: Tensor
    """``(B, T')`` long, 1 for real tokens (slide tokens included)."""
    position_ids: Tensor
    """``(B, T')`` positions counted over real tokens (left padding allowed)."""
    slide_mask: Tensor
    """``(B, T')`` bool, True at the slide-token positions."""
    labels: Tensor | None
    """``(B, T')`` long with -100 on slide tokens (and wherever the input labels had -100)."""


@dataclass
class SlideLMOutput:
    """What :meth:`HierarchicalSlideLM.forward` returns."""

    loss: Tensor | None
    """Mean next-token cross-entropy over labelled positions (None without labels)."""
    logits: Tensor
    """``(B, T', vocab)``."""
    inputs: SlideInputs
    """The expanded inputs (attention mask, labels, slide positions)."""
    hierarchy: HierarchyOutput
    """The slide encoder's output (pooled per-scale vectors for the auxiliary losses, region
    weights as evidence)."""


def _lm_hidden_size(llm: Any) -> int:
    config = llm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _cache_names(llm: Any) -> tuple[str, str]:
    """``(forward keyword, output attribute)`` of the KV cache: ``cache`` in recent transformers,
    ``past_key_values`` before."""
    import inspect

    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    params = inspect.signature(type(base).forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return name, name


def _max_positions(llm: Any) -> int | None:
    config = llm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


def load_causal_lm(name_or_path: str | os.PathLike[str], *, dtype: Any = "auto", device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: the preset ``tiny-qwen2-lm`` or a local causal-LM folder."""
    require("transformers", "models")
    from pathmllm.models.backbone import (
        CheckpointError,
        UnsupportedModelError,
        resolve_checkpoint,
        resolve_device,
        resolve_dtype,
    )
    from pathmllm.models.tiny_lm import LM_PRESETS, build_tiny_lm

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = str(name_or_path)
    if name in LM_PRESETS and not Path(name).exists():
        model, tokenizer = build_tiny_lm(name)
        return model.to(device=device, dtype=torch_dtype), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_checkpoint(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a Hugging Face checkpoint folder.")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type not in SUPPORTED_LM_FAMILIES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_LM_FAMILIES.items())
        raise UnsupportedModelError(
            f"{folder}: model_type {model_type!r} is not a supported causal LM for the slide model. "
            f"Supported: {supported}.")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise CheckpointError(f"{folder} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); "
                              "save them with tokenizer.save_pretrained(folder).")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
    except OSError as exc:
        raise CheckpointError(f"{folder}: could not load the weights ({exc}).") from None
    log.info("loaded %s causal LM from %s", SUPPORTED_LM_FAMILIES[model_type], folder)
    return model.to(device), tokenizer


class HierarchicalSlideLM(nn.Module):
    """:class:`HierarchicalSlideEncoder` + a causal LM that reads its slide tokens.

    Args:
        config: the slide encoder's config; ``llm_hidden_size`` must equal the LM's hidden size.
        llm: a Hugging Face causal LM (``...ForCausalLM``).
        tokenizer: its tokenizer; ``slide_token`` is added as a special token if absent (the
            LM's embeddings are resized).
        slide_token: the placeholder text the slide tokens replace.
        encoder: an existing encoder to reuse (default: a new one from ``config``).
    """

    def __init__(
        self,
        config: HierarchyConfig,
        llm: Any,
        tokenizer: Any,
        *,
        slide_token: str = "<slide>",
        encoder: HierarchicalSlideEncoder | None = None,
    ) -> None:
        super().__init__()
        lm_hidden = _lm_hidden_size(llm)
        if lm_hidden != config.llm_hidden_size:
            raise ValueError(
                f"the language model's hidden size is {lm_hidden} but HierarchyConfig.llm_hidden_size is "
                f"{config.llm_hidden_size}; set llm_hidden_size={lm_hidden} so the slide tokens match the LM.")
        if slide_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [slide_token]},
                                         replace_extra_special_tokens=False)
        if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(tokenizer))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.config = config
        self.encoder = encoder if encoder is not None else HierarchicalSlideEncoder(config)
        self.llm = llm
        self.tokenizer = tokenizer
        self.slide_token = slide_token
        self.slide_token_id = int(tokenizer.convert_tokens_to_ids(slide_token))
        self.lora_applied = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lm(
        cls,
        name_or_path: str | os.PathLike[str],
        config: HierarchyConfig,
        *,
        dtype: Any = "auto",
        device: str = "auto",
        slide_token: str = "<slide>",
    ) -> HierarchicalSlideLM:
        """A new slide model over the LM ``name_or_path`` (preset or local folder); random encoder."""
        llm, tokenizer = load_causal_lm(name_or_path, dtype=dtype, device=device)
        model = cls(config, llm, tokenizer, slide_token=slide_token)
        param = next(llm.parameters())
        return model.to(device=param.device)

    @property
    def num_slide_tokens(self) -> int:
        return self.config.num_slide_tokens

    @property
    def max_positions(self) -> int | None:
        """The LM's context length (``max_position_embeddings``), or None if it has none."""
        return _max_positions(self.llm)

    # ------------------------------------------------------------------ LoRA
    def apply_lora(
        self,
        r: int = 8,
        alpha: int = 16,
        target_modules: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        dropout: float = 0.0,
    ) -> HierarchicalSlideLM:
        """Wrap the LM with LoRA adapters (peft); the LM's own weights freeze, the encoder stays trainable."""
        peft = require("peft", "LoRA fine-tuning of the slide LLM")
        lora = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout,
                               task_type="CAUSAL_LM")
        self.llm = peft.get_peft_model(self.llm, lora)
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.lora_applied = True
        return self

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(
        self,
        prompt_texts: list[str],
        answer_texts: list[str] | None = None,
        *,
        padding_side: str = "right",
    ) -> dict[str, Tensor]:
        """Tokenize prompts (each with one ``<slide>``) and optional answers.

        Returns ``input_ids``, ``attention_mask`` (``(B, T)``) and, with answers, ``labels``:
        -100 on the prompt and padding, the answer tokens (followed by EOS) elsewhere.
        """
        if answer_texts is not None and len(answer_texts) != len(prompt_texts):
            raise ValueError(f"{len(prompt_texts)} prompts but {len(answer_texts)} answers")
        rows: list[tuple[list[int], list[int]]] = []
        for i, prompt in enumerate(prompt_texts):
            count = prompt.count(self.slide_token)
            if count != 1:
                raise ValueError(f"prompt {i} holds {count} {self.slide_token} placeholders; put exactly one where "
                                 f"the slide goes, e.g. {self.slide_token + chr(10) + 'What is the diagnosis?'!r}")
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer: list[int] = []
            if answer_texts is not None:
                answer = self.tokenizer(answer_texts[i], add_special_tokens=False)["input_ids"]
                if self.tokenizer.eos_token_id is not None:
                    answer = answer + [self.tokenizer.eos_token_id]
            rows.append((ids, answer))
        width = max(len(p) + len(a) for p, a in rows)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, (p, a) in enumerate(rows):
            seq = p + a
            start = 0 if padding_side == "right" else width - len(seq)
            input_ids[b, start:start + len(seq)] = torch.tensor(seq)
            attention[b, start:start + len(seq)] = 1
            if a:
                labels[b, start + len(p):start + len(seq)] = torch.tensor(a)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if answer_texts is not None:
            out["labels"] = labels
        return out

    def _check_context(self, text_tokens: int, extra: int = 0) -> None:
        limit = self.max_positions
        if limit is None:
            return
        need = text_tokens + self.num_slide_tokens + extra
        if need > limit:
            room = limit - self.num_slide_tokens - extra
            gen = f" and {extra} new tokens" if extra else ""
            raise ValueError(
                f"the input is too long: {text_tokens} text tokens + {self.num_slide_tokens} slide tokens{gen} "
                f"need {need} positions but the language model's context is {limit}; at most {room} text tokens "
                "fit. Shorten the question (or the answer), or use fewer slide tokens.")

    def embed_inputs(
        self,
        slide_tokens: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> SlideInputs:
        """Splice ``slide_tokens`` ``(B, N, L)`` in place of each row's ``<slide>`` in ``input_ids`` ``(B, T)``."""
        b, t = input_ids.shape
        n = slide_tokens.shape[1]
        if slide_tokens.shape[0] != b:
            raise ValueError(f"{slide_tokens.shape[0]} slides but {b} prompts")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_slide = (input_ids == self.slide_token_id) & attention_mask.bool()
        counts = is_slide.sum(1)
        if (counts != 1).any():
            bad = int((counts != 1).nonzero()[0, 0])
            raise ValueError(f"prompt {bad} holds {int(counts[bad])} {self.slide_token} tokens; each prompt needs "
                             "exactly one placeholder where the slide tokens go")
        real_tokens = int(attention_mask.sum(1).max()) - 1
        self._check_context(real_tokens)
        pos = is_slide.long().argmax(1)  # (B,)
        new_t = t - 1 + n
        j = torch.arange(new_t, device=input_ids.device)[None].expand(b, new_t)
        slide_mask = (j >= pos[:, None]) & (j < pos[:, None] + n)
        src = torch.where(j < pos[:, None], j, j - n + 1).clamp(0, t - 1)
        src = torch.where(slide_mask, pos[:, None], src)
        new_ids = input_ids.gather(1, src)
        new_attention = attention_mask.gather(1, src).masked_fill(slide_mask, 1)
        new_labels = None
        if labels is not None:
            new_labels = labels.gather(1, src).masked_fill(slide_mask, -100)
        embeds = self.llm.get_input_embeddings()(new_ids)
        embeds = embeds.masked_scatter(slide_mask[..., None], slide_tokens.to(embeds.dtype))
        position_ids = (new_attention.cumsum(1) - 1).clamp_min(0)
        return SlideInputs(embeds, new_attention, position_ids, slide_mask, new_labels)

    def embed_texts(self, texts: list[str], *, max_length: int | None = None) -> Tensor:
        """Text vectors ``(n, L)`` in the space of the pooled visual vectors.

        The masked mean of the LM's last hidden states over the text's tokens (computed without
        gradient: the LM is the frozen text tower), then the encoder's trainable
        ``text_projection``. These are the text side of the hierarchical contrastive loss and of
        evidence scores.
        """
        if not texts:
            raise ValueError("embed_texts needs at least one text")
        device = next(self.llm.parameters()).device
        limit = max_length or self.max_positions or 512
        enc = self.tokenizer(list(texts), add_special_tokens=False, padding=True, truncation=True,
                             max_length=limit, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        empty = (mask.sum(1) == 0).nonzero()
        if len(empty):
            raise ValueError(f"text {int(empty[0, 0])} is empty after tokenization")
        with torch.no_grad():
            out = self.llm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            w = mask.to(hidden.dtype)[..., None]
            pooled = (hidden * w).sum(1) / w.sum(1)
        proj = self.encoder.text_projection
        return proj(pooled.to(proj.weight.dtype))

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        batch: HierarchyBatch,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> SlideLMOutput:
        """Encode the slides, splice their tokens into the prompts, run the LM.

        ``input_ids`` / ``attention_mask`` / ``labels`` are ``(B, T)`` (see :meth:`prepare_inputs`);
        the returned logits are ``(B, T - 1 + num_slide_tokens, vocab)``.
        """
        hierarchy = self.encoder(batch)
        inputs = self.embed_inputs(hierarchy.slide_tokens, input_ids, attention_mask, labels)
        out = self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                       position_ids=inputs.position_ids, labels=inputs.labels)
        return SlideLMOutput(out.loss if labels is not None else None, out.logits, inputs, hierarchy)

    @torch.no_grad()
    def generate(self, batch: HierarchyBatch, prompt_texts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to ``prompt_texts`` (one ``<slide>`` each) about the slides in ``batch``."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        device = next(self.llm.parameters()).device
        enc = self.prepare_inputs(prompt_texts, padding_side="left")
        ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        self._check_context(int(attention.sum(1).max()) - 1, extra=max_new_tokens)
        hierarchy = self.encoder(batch.to(device))
        inputs = self.embed_inputs(hierarchy.slide_tokens, ids, attention)
        attention, position = inputs.attention_mask, inputs.position_ids
        out = self.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=attention, position_ids=position,
                       use_cache=True)
        cache_arg, cache_attr = _cache_names(self.llm)
        eos = self.tokenizer.eos_token_id
        pad = int(self.tokenizer.pad_token_id)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        generated: list[Tensor] = []
        for step in range(max_new_tokens):
            next_token = out.logits[:, -1].argmax(-1)
            next_token = torch.where(done, torch.full_like(next_token, pad), next_token)
            generated.append(next_token)
            if eos is not None:
                done = done | (next_token == eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], 1)
            position = position[:, -1:] + 1
            out = self.llm(input_ids=next_token[:, None], attention_mask=attention, position_ids=position,
                           use_cache=True, **{cache_arg: getattr(out, cache_attr)})
        tokens = torch.stack(generated, 1).tolist()
        texts = []
        for row in tokens:
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/llm`` (LM + tokenizer; LoRA merged), the encoder weights and its config."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        llm = self.llm
        if self.lora_applied:
            llm = copy.deepcopy(self.llm).merge_and_unload()
        llm.save_pretrained(folder / LLM_FOLDER)
        self.tokenizer.save_pretrained(folder / LLM_FOLDER)
        state = {k: v.detach().contiguous().cpu() for k, v in self.encoder.state_dict().items()}
        tmp = folder / (HIERARCHY_WEIGHTS + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / HIERARCHY_WEIGHTS)
        config = asdict(self.config)
        config["resampler_scales"] = list(config["resampler_scales"])
        config["slide_token"] = self.slide_token
        tmp = folder / (HIERARCHY_CONFIG + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, folder / HIERARCHY_CONFIG)
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], *, dtype: Any = "auto", device: str = "auto"
    ) -> HierarchicalSlideLM:
        """Restore a model written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        from pathmllm.models.backbone import CheckpointError

        folder = Path(folder)
        config_file, weights = folder / HIERARCHY_CONFIG, folder / HIERARCHY_WEIGHTS
        for needed in (config_file, weights, folder / LLM_FOLDER):
            if not needed.exists():
                raise CheckpointError(f"{folder} is not a saved slide model: {needed.name} is missing "
                                      "(write one with HierarchicalSlideLM.save_pretrained(folder)).")
        raw = json.loads(config_file.read_text())
        slide_token = raw.pop("slide_token", "<slide>")
        if "resampler_scales" in raw:
            raw["resampler_scales"] = tuple(raw["resampler_scales"])
        try:
            config = HierarchyConfig(**raw)
        except TypeError as exc:
            raise CheckpointError(f"{config_file} does not match HierarchyConfig ({exc}).") from None
        llm, tokenizer = load_causal_lm(folder / LLM_FOLDER, dtype=dtype, device=device)
        lm_hidden = _lm_hidden_size(llm)
        if lm_hidden != config.llm_hidden_size:
            raise ValueError(
                f"{config_file} has llm_hidden_size {config.llm_hidden_size} but the language model in "
                f"{folder / LLM_FOLDER} has hidden size {lm_hidden}; the encoder was trained for another LM.")
        model = cls(config, llm, tokenizer, slide_token=slide_token)
        param = next(llm.parameters())
        model.encoder.load_state_dict(load_file(str(weights)))
        return model.to(device=param.device)  # the encoder keeps its saved dtype (float32)
