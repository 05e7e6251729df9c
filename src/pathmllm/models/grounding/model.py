"""MedPLIB-style grounding model: a Qwen2-VL backbone + region prompts + ``<SEG>`` masks.

:class:`GroundingLM` ties the pieces together:

* **Region in** — a prompt may mark a region with ``<region>``; it is expanded to
  ``<region>`` + ``<region_feat>`` × ``region_tokens`` + ``</region>``. The ``<region_feat>``
  placeholder embeddings are replaced (``masked_scatter``, as in the slide LM) by the tokens of a
  :class:`~pathmllm.models.grounding.region.RegionEncoder` that pools the backbone's merged
  vision features (``get_image_features``: ``(t·gh·gw, L)`` after Qwen2-VL's 2×2 merge) under
  the region mask. The mask is mapped to that grid by :func:`region_grid`: Qwen2-VL resizes the
  image to ``(grid_h·patch, grid_w·patch)`` without padding, so the mask is resized (area) to
  that size and average-pooled to ``(grid_h/merge, grid_w/merge)``.
* **Mask out** — the answer may hold ``<SEG>``; the last-layer hidden state that predicted it
  (:func:`~pathmllm.models.grounding.seg.gather_seg_hidden`, default ``source``) goes through
  :class:`~pathmllm.models.grounding.seg.SegHead` to a SAM prompt and the
  :class:`~pathmllm.models.grounding.seg.MaskDecoderWrapper` decodes a mask at the original
  image size. No ``<SEG>`` → no mask (``None`` from :meth:`GroundingLM.generate`).

Only the Qwen2-VL family (``qwen2_vl``, ``qwen2_5_vl``) is supported: their forward accepts
ready-made image features (``mm_encoder_outputs``), so the vision tower runs once and the same
features serve the LM and the region encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationConfig

from pathmllm.losses import mask_loss
from pathmllm.models.grounding.moe import MoEFeedForward, convert_to_moe
from pathmllm.models.grounding.region import RegionEncoder
from pathmllm.models.grounding.seg import MaskDecoderWrapper, SegHead, gather_seg_hidden

__all__ = [
    "REGION_END",
    "REGION_FEAT",
    "REGION_START",
    "SEG_TOKEN",
    "GroundingLM",
    "region_grid",
]

REGION_START = "<region>"
REGION_END = "</region>"
REGION_FEAT = "<region_feat>"
SEG_TOKEN = "<SEG>"
IMAGE_MARKER = "<image>"
SUPPORTED = ("qwen2_vl", "qwen2_5_vl")


def region_grid(
    mask_hw: np.ndarray | Tensor, resized_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> Tensor:
    """Fraction of each merged patch covered by ``mask_hw``, as ``(gh, gw)`` float.

    The mask (at the original image size) is resized with area averaging to ``resized_hw``, the
    size the processor resized the image to (no padding, aspect may change slightly), then
    average-pooled to the merged patch grid ``grid_hw``.
    """
    m = torch.as_tensor(np.asarray(mask_hw) if not isinstance(mask_hw, Tensor) else mask_hw)
    if m.ndim != 2:
        raise ValueError(f"a region mask must be 2-D (H, W), got shape {tuple(m.shape)}")
    m = (m != 0).float()
    if not bool(m.any()):
        raise ValueError("the region mask is empty")
    r = F.interpolate(m[None, None], size=(int(resized_hw[0]), int(resized_hw[1])), mode="area")
    g = F.adaptive_avg_pool2d(r, (int(grid_hw[0]), int(grid_hw[1])))[0, 0].clamp_(0.0, 1.0)
    if not bool((g > 0).any()):
        raise ValueError("the region mask covers no patch")
    return g


def _image_array(image: Any) -> np.ndarray:
    arr = np.array(image.convert("RGB") if hasattr(image, "convert") else image)  # writable copy
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    return arr


class GroundingLM(nn.Module):
    """Backbone VLM + :class:`RegionEncoder` (region in) + :class:`SegHead` → SAM (mask out).

    Args:
        backbone: a loaded :class:`~pathmllm.models.backbone.Backbone` of the Qwen2-VL family.
        sam_wrapper: the SAM mask decoder (:class:`MaskDecoderWrapper`).
        region_mode: ``"single"`` (one pooled token) or ``"multi"`` (``region_tokens`` queries).
        region_tokens: ``<region_feat>`` placeholders per region (1 for ``"single"``).
        lm_weight, mask_weight: weights of the LM and mask losses in the total.
        bce_weight, dice_weight: weights inside :func:`~pathmllm.losses.mask_loss`.
    """

    def __init__(
        self,
        backbone: Any,
        sam_wrapper: MaskDecoderWrapper,
        region_mode: Literal["single", "multi"] = "single",
        region_tokens: int = 1,
        *,
        lm_weight: float = 1.0,
        mask_weight: float = 1.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        region_heads: int = 4,
    ) -> None:
        super().__init__()
        if backbone.family not in SUPPORTED:
            raise ValueError(
                f"GroundingLM supports the Qwen2-VL family ({', '.join(SUPPORTED)}), "
                f"got {backbone.family!r}"
            )
        if region_mode == "single" and region_tokens != 1:
            raise ValueError("region_mode='single' uses exactly one region token")
        self.backbone = backbone
        self.model = backbone.model  # registers the LM as a submodule
        self.processor = backbone.processor
        self.sam = sam_wrapper
        self.region_mode, self.region_tokens = region_mode, int(region_tokens)
        self.lm_weight, self.mask_weight = float(lm_weight), float(mask_weight)
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)
        ids = backbone.add_tokens([REGION_START, REGION_END, REGION_FEAT, SEG_TOKEN])
        self.region_start_id, self.region_end_id, self.region_feat_id, self.seg_token_id = ids
        hidden = backbone.hidden_size
        self.vision_dim = hidden  # Qwen2-VL's merger projects the merged patches to the LM size
        self.region_encoder = RegionEncoder(
            self.vision_dim, hidden, mode=region_mode, num_tokens=self.region_tokens,
            num_heads=region_heads,
        )
        self.seg_head = SegHead(hidden, prompt_dim=sam_wrapper.prompt_dim)
        dtype, device = backbone.dtype, backbone.device
        self.region_encoder.to(device=device, dtype=dtype)
        self.seg_head.to(device=device)
        vc = self.model.config.vision_config
        self.patch_size = int(vc.patch_size)
        self.merge_size = int(vc.spatial_merge_size)
        self.moe_layout: dict[str, Any] | None = None
        self.last_batch: dict[str, Tensor] = {}
        """``input_ids``, ``labels``, ``attention_mask`` of the last training forward (routing statistics)."""

    # -- Mixture-of-Experts and saving -------------------------------------------------------

    def make_moe(self, layers: Sequence[int] | str = "all", num_experts: int = 2, top_k: int = 1,
                 expert_states: Callable[[int], Sequence[Any] | None] | None = None,
                 jitter: float = 0.0) -> list[MoEFeedForward]:
        """Turn the FFN of the chosen LM layers into experts + router
        (:func:`~pathmllm.models.grounding.moe.convert_to_moe`); recorded for saving.

        ``expert_states(layer)`` gives that layer's ``num_experts`` FFN state dicts (MedPLIB: the
        vision-language expert's and the grounding expert's); None copies the current FFN.
        """
        from pathmllm.models.grounding.moe import decoder_layers

        if self.moe_layout is not None:
            raise ValueError("this model is already a Mixture-of-Experts model")
        n = len(decoder_layers(self.model))
        indices = list(range(n)) if layers == "all" else [int(i) % n for i in layers]  # type: ignore[union-attr]
        mods: list[MoEFeedForward] = []
        for i in indices:
            states = expert_states(i) if expert_states is not None else None
            mods += convert_to_moe(self.model, [i], num_experts, top_k, states, jitter=jitter)
        self.moe_layout = {"layers": [m.layer_index for m in mods], "num_experts": int(num_experts),
                           "top_k": int(top_k)}
        return mods

    def moe_modules(self) -> list[MoEFeedForward]:
        return [m for m in self.model.modules() if isinstance(m, MoEFeedForward)]

    def save_pretrained(self, folder: Any) -> Any:
        """One folder with everything (:func:`~pathmllm.models.grounding.saving.save_grounding`)."""
        from pathmllm.models.grounding.saving import save_grounding

        return save_grounding(self, folder)

    @classmethod
    def from_pretrained(cls, folder: Any, *, device: str = "auto", dtype: Any = "auto") -> GroundingLM:
        from pathmllm.models.grounding.saving import load_grounding

        return load_grounding(folder, device=device, dtype=dtype)

    # -- text --------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def region_block(self) -> str:
        return REGION_START + REGION_FEAT * self.region_tokens + REGION_END

    def format_prompt(self, prompt: str, has_region: bool) -> str:
        """Chat-templated prompt text (image first) with the region block expanded."""
        text = prompt.replace(IMAGE_MARKER, "").replace(REGION_START + REGION_END, REGION_START).strip()
        if REGION_FEAT in text or REGION_END in text:
            raise ValueError(f"write only {REGION_START} (or MeCoVQA's empty {REGION_START}{REGION_END}) in a "
                             "prompt; it is expanded here")
        if has_region:
            n = text.count(REGION_START)
            if n > 1:
                raise ValueError("a prompt may mark one region")
            text = text.replace(REGION_START, self.region_block) if n else f"{text} {self.region_block}"
        elif REGION_START in text:
            raise ValueError(f"the prompt marks a {REGION_START} but no region mask was given")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, image: Any, prompt: str, has_region: bool) -> dict[str, Tensor]:
        text = self.format_prompt(prompt, has_region)
        return dict(self.processor(text=[text], images=[image], return_tensors="pt"))

    # -- vision ------------------------------------------------------------------------------

    def image_features(self, pixel_values: Tensor, grid_thw: Tensor) -> Any:
        """The backbone's merged patch features (one vision pass; reused by the LM)."""
        device = self.backbone.device
        return self.model.model.get_image_features(
            pixel_values.to(device), grid_thw.to(device), return_dict=True
        )

    def region_weights(self, mask: np.ndarray | Tensor, grid_thw: Tensor) -> Tensor:
        """``(t·gh·gw,)`` coverage weights of the merged patches (frames share the mask)."""
        t, h, w = (int(x) for x in grid_thw)
        gh, gw = h // self.merge_size, w // self.merge_size
        g = region_grid(mask, (h * self.patch_size, w * self.patch_size), (gh, gw))
        return g.reshape(-1).repeat(t)

    def region_embeddings(
        self, features: Sequence[Tensor], grid_thw: Tensor, masks: Sequence[Any]
    ) -> list[Tensor | None]:
        """Per image ``(K, L)`` region tokens, or ``None`` where no region mask was given."""
        out: list[Tensor | None] = []
        for feats, thw, mask in zip(features, grid_thw, masks):
            if mask is None:
                out.append(None)
                continue
            w = self.region_weights(mask, thw).to(feats.device)
            tokens = self.region_encoder(feats.unsqueeze(0), w.reshape(1, 1, -1))
            out.append(tokens[0])
        return out

    # -- embeddings --------------------------------------------------------------------------

    def _embed(self, input_ids: Tensor, region: list[Tensor | None]) -> Tensor:
        embeds = self.model.get_input_embeddings()(input_ids)
        is_feat = input_ids == self.region_feat_id
        for b, tokens in enumerate(region):
            n = int(is_feat[b].sum())
            expected = 0 if tokens is None else tokens.shape[0]
            if n != expected:
                raise ValueError(
                    f"row {b} holds {n} {REGION_FEAT} tokens but {expected} region tokens were made"
                )
        parts = [t for t in region if t is not None]
        if parts:
            embeds = embeds.masked_scatter(is_feat[..., None], torch.cat(parts).to(embeds.dtype))
        return embeds

    def _lm(self, input_ids: Tensor, attention_mask: Tensor, embeds: Tensor, vision: Any,
            grid_thw: Tensor, mm_token_type_ids: Tensor | None, labels: Tensor | None = None) -> Any:
        kwargs: dict[str, Any] = {}
        if mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = mm_token_type_ids
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=embeds,
            mm_encoder_outputs={"image": vision}, image_grid_thw=grid_thw, labels=labels,
            output_hidden_states=True, use_cache=False, **kwargs,
        )

    # -- masks -------------------------------------------------------------------------------

    def _decode_masks(self, hidden: Tensor, input_ids: Tensor, images: Sequence[Any],
                      rows: Sequence[int]) -> list[Tensor]:
        """Mask logits at the original size for the ``<SEG>`` tokens of ``rows`` (one per row)."""
        seg_hidden = gather_seg_hidden(hidden, input_ids, self.seg_token_id)
        pixels, geometry = self.sam.preprocess([_image_array(images[r]) for r in rows])
        emb = self.sam.image_embeddings(pixels)
        prompts = [self.seg_head(seg_hidden[r]) for r in rows]
        low = self.sam.decode(emb, prompts)
        return [self.sam.postprocess(lg, g) for lg, g in zip(low, geometry)]

    # -- training ----------------------------------------------------------------------------

    def forward(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        answers: Sequence[str],
        region_masks: Sequence[np.ndarray | None] | None = None,
        target_masks: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, {"lm", "mask", "bce", "dice"})`` for a batch.

        ``region_masks[i]`` ``(H, W)`` marks the prompt's region; ``target_masks[i]`` ``(H, W)``
        or ``(n, H, W)`` are the masks of the ``n`` ``<SEG>`` tokens of answer ``i`` (rows
        without a target get no mask loss). The LM loss covers the answers only.
        """
        b = len(images)
        if not (len(prompts) == len(answers) == b):
            raise ValueError(f"{b} images, {len(prompts)} prompts and {len(answers)} answers")
        region_masks = list(region_masks) if region_masks is not None else [None] * b
        target_masks = list(target_masks) if target_masks is not None else [None] * b
        if len(region_masks) != b or len(target_masks) != b:
            raise ValueError("region_masks and target_masks need one entry per image")
        tok = self.tokenizer
        device = self.backbone.device
        rows, pix, thws = [], [], []
        for img, prompt, answer, rm in zip(images, prompts, answers, region_masks):
            enc = self._encode(img, prompt, rm is not None)
            ans = tok(answer + tok.eos_token, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            p_ids = enc["input_ids"][0]
            ids = torch.cat([p_ids, ans])
            labels = torch.cat([torch.full_like(p_ids, -100), ans])
            tt = enc.get("mm_token_type_ids")
            tt = None if tt is None else torch.cat([tt[0], torch.zeros_like(ans)])
            rows.append((ids, labels, tt))
            pix.append(enc["pixel_values"])
            thws.append(enc["image_grid_thw"])
        t_max = max(r[0].shape[0] for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.full((b, t_max), pad, dtype=torch.long)
        labels = torch.full((b, t_max), -100, dtype=torch.long)
        attention = torch.zeros((b, t_max), dtype=torch.long)
        type_ids = torch.zeros((b, t_max), dtype=torch.long)
        for i, (ids, lab, tt) in enumerate(rows):  # right padding
            n = ids.shape[0]
            input_ids[i, :n], labels[i, :n], attention[i, :n] = ids, lab, 1
            if tt is not None:
                type_ids[i, :n] = tt
        has_types = rows[0][2] is not None
        input_ids, labels, attention = input_ids.to(device), labels.to(device), attention.to(device)
        self.last_batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        grid_thw = torch.cat(thws).to(device)
        vision = self.image_features(torch.cat(pix), grid_thw)
        region = self.region_embeddings(vision.pooler_output, grid_thw, region_masks)
        embeds = self._embed(input_ids, region)
        out = self._lm(input_ids, attention, embeds, vision, grid_thw,
                       type_ids.to(device) if has_types else None, labels)
        lm = out.loss
        mask_rows = [i for i, tm in enumerate(target_masks) if tm is not None]
        if mask_rows:
            logits = self._decode_masks(out.hidden_states[-1], input_ids, images, mask_rows)
            targets = []
            for i, lg in zip(mask_rows, logits):
                tgt = torch.as_tensor(np.asarray(target_masks[i]) != 0, device=lg.device)
                if tgt.ndim == 2:
                    tgt = tgt.unsqueeze(0)
                if tgt.shape[0] != lg.shape[0]:
                    raise ValueError(
                        f"sample {i}: {tgt.shape[0]} target masks but the answer holds "
                        f"{lg.shape[0]} {SEG_TOKEN} tokens")
                if tuple(tgt.shape) != tuple(lg.shape):
                    raise ValueError(f"sample {i}: target masks {tuple(tgt.shape)} are not at the image size "
                                     f"{tuple(lg.shape[1:])}")
                targets.append(tgt.float())
            mtotal, mterms = mask_loss(logits, targets, self.bce_weight, self.dice_weight)
        else:
            mtotal = lm.new_zeros(())
            mterms = {"bce": mtotal, "dice": mtotal}
        total = self.lm_weight * lm + self.mask_weight * mtotal
        return total, {"lm": lm.detach(), "mask": mtotal.detach(),
                       "bce": mterms["bce"].detach(), "dice": mterms["dice"].detach()}

    # -- inference ---------------------------------------------------------------------------

    def masks_for_ids(self, image: Any, ids: Tensor, thw: Tensor, vision: Any,
                      region: list[Tensor | None], type_ids: Tensor | None) -> Tensor | None:
        """Boolean ``(n, H, W)`` masks for the ``<SEG>`` tokens in ``ids`` ``(1, T)``, or ``None``.

        Runs the LM once over the whole sequence and decodes one mask per ``<SEG>``; a sequence
        without ``<SEG>`` gives ``None`` (no mask is forced).
        """
        if not bool((ids == self.seg_token_id).any()):
            return None
        out = self._lm(ids, torch.ones_like(ids), self._embed(ids, region), vision, thw, type_ids)
        logits = self._decode_masks(out.hidden_states[-1], ids, [image], [0])[0]
        return (logits > 0).cpu()

    @torch.no_grad()
    def generate(
        self,
        image: Any,
        prompt: str,
        region_mask: np.ndarray | None = None,
        max_new_tokens: int = 32,
    ) -> tuple[str, Tensor | None]:
        """Greedy answer and its masks: ``(text, (n, H, W) bool or None when no <SEG>)``.

        Decoding is Hugging Face ``generate`` with its KV cache: the prompt (image features and
        region embeddings spliced in) is run once, then one token per step. Then the LM runs
        once over the whole sequence for the hidden states of the ``<SEG>`` tokens, whose masks
        the SAM decoder draws. (Tested equal, logit by logit, to re-running the whole sequence
        at every step.)
        """
        p = self._prepare(image, prompt, region_mask)
        out = self._decode(p, max_new_tokens)
        eos = self.tokenizer.eos_token_id
        new = out[0, p["ids"].shape[1]:]
        if len(new) and int(new[-1]) == eos:
            new = new[:-1]
        ids = torch.cat([p["ids"], new[None].to(p["ids"].device)], dim=1)
        text = self.tokenizer.decode(new.tolist(), skip_special_tokens=False)
        tt = p["types"]
        types = None if tt is None else F.pad(tt, (0, ids.shape[1] - tt.shape[1]))
        masks = self.masks_for_ids(image, ids, p["thw"], p["vision"], p["region"], types)
        return text, masks

    def _prepare(self, image: Any, prompt: str, region_mask: np.ndarray | None) -> dict[str, Any]:
        """The prompt's ids, grid, token types, image features and region embeddings (on device)."""
        device = self.backbone.device
        enc = self._encode(image, prompt, region_mask is not None)
        thw = enc["image_grid_thw"].to(device)
        vision = self.image_features(enc["pixel_values"], thw)
        tt = enc.get("mm_token_type_ids")
        return {"ids": enc["input_ids"].to(device), "thw": thw, "vision": vision,
                "types": None if tt is None else tt.to(device),
                "region": self.region_embeddings(vision.pooler_output, thw, [region_mask])}

    def _decode(self, p: dict[str, Any], max_new_tokens: int, **extra: Any) -> Any:
        """Greedy decoding, with the KV cache, of a prompt from :meth:`_prepare` (``generate``'s output)."""
        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {} if p["types"] is None else {"mm_token_type_ids": p["types"]}
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                                  pad_token_id=eos, use_cache=True, repetition_penalty=1.0)
        ids = p["ids"]
        return self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), inputs_embeds=self._embed(ids, p["region"]),
            mm_encoder_outputs={"image": p["vision"]}, image_grid_thw=p["thw"], generation_config=config,
            **kwargs, **extra,
        )
