"""``[SEG]`` grounding (LISA / MedPLIB style): LLM hidden state → prompt → SAM mask decoder.

The LLM writes a ``[SEG]`` token; the last-layer hidden state for it goes through
:class:`SegHead` (LISA's ``text_hidden_fcs``) to a ``(1, prompt_dim)`` sparse prompt embedding,
which a SAM-style mask decoder (:class:`MaskDecoderWrapper` around a transformers
:class:`~transformers.SamModel`) turns into low-resolution mask logits; :meth:`postprocess`
crops the padding and resizes them to the original image.

**No ``[SEG]`` → no mask.** An image whose text holds no ``[SEG]`` gets an empty ``(0, H, W)``
prediction. MedPLIB forced a mask for every grounding sample even when the model wrote no
``[SEG]``; that hides a failure to ground behind a made-up mask, so it is not done here.

Shapes (``S`` = SAM input size, ``e = S / patch``, low-res logits ``4e × 4e``):
``pixel_values (B, 3, S, S)`` → ``image_embeddings (B, C, e, e)``; prompts per image
``(n_i, 1, C)``; :meth:`MaskDecoderWrapper.decode` → per image ``(n_i, 4e, 4e)``;
:meth:`MaskDecoderWrapper.postprocess` → ``(n_i, H, W)``.

transformers' ``SamModel.forward`` has no argument for ready-made sparse prompt embeddings
(only points, boxes and masks), so the wrapper calls the submodules: ``vision_encoder``,
``get_image_wide_positional_embeddings()``, ``prompt_encoder`` (for the dense "no mask"
embedding) and ``mask_decoder`` with ``sparse_prompt_embeddings`` of shape
``(1, n_i, 1, C)`` (SAM's "point batch" is the prompt index) and ``multimask_output=False``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from transformers.models.sam.modeling_sam import SamVisionEncoderOutput

from pathmllm.models.grounding.region import pad_geometry, resize_longest_side, unpad_and_resize

__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "MaskDecoderWrapper",
    "SamGeometry",
    "SegHead",
    "ConvImageEncoder",
    "build_tiny_litesam",
    "build_tiny_sam",
    "build_sam_preset",
    "gather_seg_hidden",
    "load_sam",
    "predict_masks",
    "seg_positions",
]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
TINY_SAM_PRESET = "tiny-sam"
TINY_LITESAM_PRESET = "tiny-litesam"
SAM_PRESETS = (TINY_SAM_PRESET, TINY_LITESAM_PRESET)
IMAGE_ENCODER_FILE = "image_encoder.json"


# --------------------------------------------------------------------------------------------
# building / loading SAM


class ConvImageEncoder(nn.Module):
    """A small convolutional image encoder with the interface of SAM's ViT image encoder.

    ``len(widths)`` stride-2 stages (3x3 conv, GroupNorm, GELU, then a 3x3 conv at that width),
    then a 1x1 projection to ``out_channels``: ``(B, 3, S, S)`` -> ``(B, out_channels, S/2^k,
    S/2^k)``, returned as ``.last_hidden_state`` like ``SamVisionEncoder``. The idea of
    LiteMedSAM / MobileSAM (a light image encoder in front of SAM's prompt encoder and mask
    decoder); here it exists so a *random* preset can learn on a CPU: trained from scratch on
    280 Kvasir images, SAM's ViT encoder overfits at a held-out Dice of about 0.50, this one
    reaches about 0.65 in a few hundred steps (docs/architecture.md).
    """

    def __init__(self, out_channels: int, widths: Sequence[int] = (16, 32, 48), groups: int = 4) -> None:
        super().__init__()
        self.config = {"type": "conv", "out_channels": int(out_channels), "widths": [int(w) for w in widths],
                       "groups": int(groups)}
        layers: list[nn.Module] = []
        ch = 3
        for w in widths:
            layers += [nn.Conv2d(ch, w, 3, 2, 1), nn.GroupNorm(groups, w), nn.GELU(),
                       nn.Conv2d(w, w, 3, 1, 1), nn.GroupNorm(groups, w), nn.GELU()]
            ch = w
        layers.append(nn.Conv2d(ch, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> SamVisionEncoderOutput:
        return SamVisionEncoderOutput(last_hidden_state=self.net(pixel_values))


def build_tiny_sam(seed: int = 0, image_size: int = 64, hidden: int = 32) -> SamModel:
    """A real :class:`SamModel` with tiny random weights (float32, eval mode) for tests and demos.

    Vision encoder: hidden ``hidden`` (32), 2 layers (the second global), patch 8, window 4,
    ``hidden`` output channels; prompt encoder and mask decoder: hidden ``hidden``. ``image_size``
    must be a multiple of 8; the image embedding is ``image_size / 8`` square and the low-res
    logits 4× that.
    """
    patch = 8
    if image_size <= 0 or image_size % patch:
        raise ValueError(f"image_size must be a positive multiple of {patch}, got {image_size}")
    vision = SamVisionConfig(
        hidden_size=hidden,
        output_channels=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=hidden // 2,
        mlp_dim=2 * hidden,
        initializer_range=0.02,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=hidden, image_size=image_size, patch_size=patch, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=hidden,
        mlp_dim=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        iou_head_hidden_dim=hidden,
    )
    config = SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SamModel(config)
    finally:
        torch.random.set_rng_state(state)
    return model.float().eval()


def build_tiny_litesam(seed: int = 0, image_size: int = 64, hidden: int = 64) -> SamModel:
    """:func:`build_tiny_sam` (prompt encoder and mask decoder of width ``hidden``, 64) with a
    :class:`ConvImageEncoder` (widths 16, 32, 64; three stride-2 stages, so the embedding is
    ``image_size / 8`` square as with the ViT's patch 8) in place of the ViT."""
    model = build_tiny_sam(seed, image_size, hidden)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed + 1)
        model.vision_encoder = ConvImageEncoder(int(model.config.vision_config.output_channels), (16, 32, 64))
    finally:
        torch.random.set_rng_state(state)
    return model.float().eval()


def build_sam_preset(name: str, seed: int = 0, image_size: int = 64) -> SamModel:
    """``tiny-sam`` (SAM's ViT encoder) or ``tiny-litesam`` (a convolutional encoder)."""
    if name == TINY_SAM_PRESET:
        return build_tiny_sam(seed, image_size)
    if name == TINY_LITESAM_PRESET:
        return build_tiny_litesam(seed, image_size)
    raise ValueError(f"unknown SAM preset {name!r}; presets: {', '.join(SAM_PRESETS)}")


def image_encoder_config(sam: SamModel) -> dict | None:
    """The :class:`ConvImageEncoder` settings of ``sam``, or None for SAM's own ViT."""
    enc = sam.vision_encoder
    return dict(enc.config) if isinstance(enc, ConvImageEncoder) else None


def apply_image_encoder_config(sam: SamModel, config: dict | None) -> SamModel:
    """Put the image encoder described by :func:`image_encoder_config` back into ``sam``."""
    if config is None:
        return sam
    config = dict(config)
    kind = config.pop("type", None)
    if kind != "conv":
        raise ValueError(f"unknown image encoder type {kind!r} (expected 'conv')")
    sam.vision_encoder = ConvImageEncoder(**config)
    return sam


def load_sam(
    path_or_preset: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> SamModel:
    """Load a local Hugging Face SAM checkpoint folder, or the preset ``"tiny-sam"``.

    The folder must hold a transformers ``SamModel`` (``config.json`` with ``model_type`` "sam"
    plus weights), e.g. ``facebook/sam-vit-base`` or MedSAM's HF port, downloaded beforehand;
    nothing is fetched (``local_files_only=True``). SAM-Med2D ships only an original ``.pth``:
    convert it to the HF layout first. Returns the model in eval mode on ``device``.
    """
    if str(path_or_preset) in SAM_PRESETS:
        model = build_sam_preset(str(path_or_preset))
    else:
        folder = Path(path_or_preset).expanduser()
        if not folder.exists():
            raise FileNotFoundError(
                f"no SAM checkpoint folder at {folder} (give a local Hugging Face SAM folder "
                f"or the preset {TINY_SAM_PRESET!r})"
            )
        if not folder.is_dir():
            raise NotADirectoryError(
                f"{folder} is a file; give the Hugging Face checkpoint folder (config.json + "
                "weights). An original SAM/SAM-Med2D .pth must be converted to that layout first"
            )
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face checkpoint")
        try:
            model_type = json.loads(cfg_path.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{cfg_path} is not a valid JSON config: {exc}") from exc
        if model_type != "sam":
            raise ValueError(
                f"{folder} holds a {model_type!r} model, not a SAM model (config.json "
                "model_type must be 'sam')"
            )
        model = SamModel.from_pretrained(folder, local_files_only=True)
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


# --------------------------------------------------------------------------------------------
# [SEG] positions and hidden states


def _seg_mask(input_ids: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    return input_ids == int(seg_token_id)


def seg_positions(
    input_ids: torch.Tensor,
    seg_token_id: int,
    source: Literal["token", "predictor"] = "predictor",
) -> list[torch.Tensor]:
    """Per row, the sequence positions whose hidden states become mask prompts (LongTensor).

    ``input_ids (B, T)`` must be aligned with the hidden states you will index (if the LLM
    expands an image placeholder into many embeddings, expand ``input_ids`` the same way first).

    ``source="token"``: the position of each ``[SEG]`` token itself, i.e. the
    last-layer state after the LLM has read ``[SEG]`` (Sa2VA's convention).

    ``source="predictor"`` (default, MedPLIB / LISA compatible): the position **before** each ``[SEG]``, the state whose logits
    predicted ``[SEG]``. This is what LISA (and MedPLIB, GLaMM, PixelLM after it) actually
    computes: ``seg_token_mask = input_ids[:, 1:] == seg_idx`` padded with one ``False`` at the
    *end* selects ``t`` where ``input_ids[t + 1]`` is ``[SEG]`` (the extra 255 ``False``
    prepended for the image patches only realigns that mask with the expanded sequence). LISA's
    authors call it "a one-token offset such that the [SEG] token corresponds to the correct
    embedding"; Sa2VA's authors tried both and saw similar results.

    Consequence at generation time: the predictor state exists at the step that emits
    ``[SEG]``; the token state exists only once ``[SEG]`` has been fed back (any later step).
    A ``[SEG]`` at position 0 has no predictor and raises. A row without ``[SEG]`` gives an
    empty tensor (no mask).
    """
    if source not in ("token", "predictor"):
        raise ValueError(f"source must be 'token' or 'predictor', got {source!r}")
    mask = _seg_mask(input_ids, seg_token_id)
    if source == "predictor":
        if bool(mask[:, 0].any()):
            raise ValueError("a [SEG] token at position 0 has no preceding hidden state")
        # LISA: mask built from input_ids[:, 1:], padded by one False at the end
        mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return [row.nonzero().flatten() for row in mask]


def gather_seg_hidden(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    seg_token_id: int,
    source: Literal["token", "predictor"] = "predictor",
) -> list[torch.Tensor]:
    """``hidden (B, T, L)`` at :func:`seg_positions` → per row ``(n_i, L)`` (keeps the graph)."""
    if hidden.ndim != 3 or tuple(hidden.shape[:2]) != tuple(input_ids.shape):
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be (B, T, L) with (B, T) = input_ids "
            f"{tuple(input_ids.shape)}"
        )
    positions = seg_positions(input_ids, seg_token_id, source)
    return [hidden[b, pos.to(hidden.device)] for b, pos in enumerate(positions)]


# --------------------------------------------------------------------------------------------
# modules


class SegHead(nn.Module):
    """LISA's ``text_hidden_fcs``: ``Linear(L, L) → ReLU → Linear(L, P) → Dropout(0)``.

    ``(n, L)`` ``[SEG]`` hidden states → ``(n, 1, P)`` sparse prompt embeddings (one prompt token
    per mask), in the head's dtype.
    """

    def __init__(self, llm_hidden: int, prompt_dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(llm_hidden, llm_hidden),
            nn.ReLU(),
            nn.Linear(llm_hidden, prompt_dim),
            nn.Dropout(dropout),
        )
        self.llm_hidden, self.prompt_dim = llm_hidden, prompt_dim

    def forward(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        if seg_hidden.ndim != 2 or seg_hidden.shape[-1] != self.llm_hidden:
            raise ValueError(
                f"expected (n, {self.llm_hidden}) [SEG] hidden states, got {tuple(seg_hidden.shape)}"
            )
        dtype = self.mlp[0].weight.dtype
        return self.mlp(seg_hidden.to(dtype)).unsqueeze(1)


@dataclass(frozen=True)
class SamGeometry:
    """How one image was resized and padded to the SAM input (enough to undo it)."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    target: int
    centred: bool


class MaskDecoderWrapper(nn.Module):
    """A transformers :class:`SamModel` used as a prompt-embedding → mask decoder.

    The vision encoder (and the prompt encoder, whose only use here is the dense "no mask"
    embedding) are frozen by default, as in LISA/MedPLIB; the mask decoder trains.
    ``centred_padding=False`` pads bottom/right like SAM; MedPLIB pads centred for SAM-Med2D.
    """

    def __init__(
        self,
        sam: SamModel,
        *,
        freeze_vision_encoder: bool = True,
        freeze_prompt_encoder: bool = True,
        train_mask_decoder: bool = True,
        centred_padding: bool = False,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.freeze_vision_encoder = freeze_vision_encoder
        self.freeze_prompt_encoder = freeze_prompt_encoder
        self.centred_padding = centred_padding
        self.image_size = int(sam.config.vision_config.image_size)
        self.prompt_dim = int(sam.config.mask_decoder_config.hidden_size)
        for module, frozen in (
            (sam.vision_encoder, freeze_vision_encoder),
            (sam.prompt_encoder, freeze_prompt_encoder),
            (sam.mask_decoder, not train_mask_decoder),
        ):
            for p in module.parameters():
                p.requires_grad_(not frozen)
        self.register_buffer(
            "pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(SAM_PIXEL_STD).view(3, 1, 1), persistent=False
        )
        self.train(sam.training)

    def train(self, mode: bool = True) -> MaskDecoderWrapper:
        super().train(mode)
        if self.freeze_vision_encoder:
            self.sam.vision_encoder.eval()
        if self.freeze_prompt_encoder:
            self.sam.prompt_encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.sam.mask_decoder.iou_token.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sam.mask_decoder.iou_token.weight.dtype

    # -- images --------------------------------------------------------------------------

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[SamGeometry]]:
        """uint8 ``H×W×3`` (or ``H×W``) arrays → ``pixel_values (B, 3, S, S)`` and geometries.

        Each image is resized so its longest side is ``S`` (SAM's rounding; bilinear with
        antialiasing), normalised with SAM's pixel mean/std (0-255 scale) and zero-padded
        (after normalisation, like SAM) bottom/right or centred.
        """
        if len(images) == 0:
            raise ValueError("preprocess needs at least one image")
        s = self.image_size
        pixels, geometry = [], []
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8:
                raise TypeError(f"image {i}: expected uint8 pixels (0-255), got {arr.dtype}")
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=-1)
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise ValueError(f"image {i}: expected H×W×3 or H×W, got shape {arr.shape}")
            h, w = arr.shape[:2]
            new_h, new_w, _ = resize_longest_side((h, w), s)
            pad = pad_geometry((new_h, new_w), s, self.centred_padding)
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()[None]
            if (new_h, new_w) != (h, w):
                x = F.interpolate(
                    x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
                )
            x = (x[0] - self.pixel_mean.cpu()) / self.pixel_std.cpu()
            top, left, bottom, right = pad
            pixels.append(F.pad(x, (left, right, top, bottom)))
            geometry.append(SamGeometry((h, w), (new_h, new_w), pad, s, self.centred_padding))
        pixel_values = torch.stack(pixels).to(device=self.device, dtype=self.dtype)
        return pixel_values, geometry

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, C, e, e)``; no graph when the vision encoder is frozen."""
        s = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values must be (B, 3, {s}, {s}), got {tuple(pixel_values.shape)}"
            )
        x = pixel_values.to(device=self.device, dtype=self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vision_encoder):
            return self.sam.vision_encoder(x).last_hidden_state

    # -- masks ---------------------------------------------------------------------------

    def decode(
        self, image_embeddings: torch.Tensor, prompts: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Per image ``(n_i, 1, C)`` prompts → low-res mask logits ``(n_i, h, w)``.

        Images with no prompt get an empty ``(0, h, w)`` tensor (no mask, and the decoder does
        not run for them). One mask per prompt (``multimask_output=False``, SAM's mask token 0).
        """
        if image_embeddings.ndim != 4:
            raise ValueError(
                f"image_embeddings must be (B, C, e, e), got {tuple(image_embeddings.shape)}"
            )
        b = image_embeddings.shape[0]
        if len(prompts) != b:
            raise ValueError(f"{len(prompts)} prompt tensors for {b} images")
        e = int(self.sam.config.prompt_encoder_config.image_embedding_size)
        if tuple(image_embeddings.shape[1:]) != (self.prompt_dim, e, e):
            raise ValueError(
                f"image_embeddings {tuple(image_embeddings.shape)} do not match this SAM "
                f"(B, {self.prompt_dim}, {e}, {e})"
            )
        h = w = 4 * e  # the decoder upsamples the embedding 4x
        pos = self.sam.get_image_wide_positional_embeddings()
        _, dense = self.sam.prompt_encoder(None, None, None, None)  # no-mask embedding (1, C, e, e)
        for i, p in enumerate(prompts):
            if p.ndim != 3 or p.shape[1:] != (1, self.prompt_dim):
                raise ValueError(
                    f"image {i}: prompts must be (n, 1, {self.prompt_dim}), got {tuple(p.shape)}"
                )
        counts = {int(p.shape[0]) for p in prompts}
        if len(counts) == 1 and 0 not in counts and b > 1:
            # every image has the same number of prompts (training: one <SEG> each): one batched
            # decoder call (SAM's own batch layout) instead of one call per image
            masks, _ = self.sam.mask_decoder(
                image_embeddings=image_embeddings.to(self.dtype),
                image_positional_embeddings=pos.repeat(b, 1, 1, 1),
                sparse_prompt_embeddings=torch.stack([p.to(self.dtype) for p in prompts]),  # (B, n, 1, C)
                dense_prompt_embeddings=dense.expand(b, -1, -1, -1),
                multimask_output=False,
            )
            return list(masks[:, :, 0].unbind(0))  # (B, n, 1, h, w) → B × (n, h, w)
        out: list[torch.Tensor] = []
        for i, p in enumerate(prompts):
            if p.shape[0] == 0:
                out.append(image_embeddings.new_zeros((0, h, w), dtype=self.dtype))
                continue
            masks, _ = self.sam.mask_decoder(
                image_embeddings=image_embeddings[i : i + 1].to(self.dtype),
                image_positional_embeddings=pos,
                sparse_prompt_embeddings=p.to(self.dtype).unsqueeze(0),  # (1, n_i, 1, C)
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            out.append(masks[0, :, 0])  # (1, n_i, 1, h, w) → (n_i, h, w)
        return out

    def postprocess(self, logits: torch.Tensor, geometry: SamGeometry) -> torch.Tensor:
        """Low-res ``(n, h, w)`` logits → ``(n, H, W)`` logits at the original image size."""
        if logits.ndim != 3:
            raise ValueError(f"logits must be (n, h, w), got {tuple(logits.shape)}")
        H, W = geometry.original_hw
        if logits.shape[0] == 0:
            return logits.new_zeros((0, H, W), dtype=torch.float32)
        return unpad_and_resize(logits, geometry.original_hw, geometry.target, geometry.centred)


def predict_masks(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    seg_token_id: int,
    head: SegHead,
    decoder: MaskDecoderWrapper,
    image_embeddings: torch.Tensor,
    geometry: Sequence[SamGeometry] | None = None,
    source: Literal["token", "predictor"] = "predictor",
) -> list[torch.Tensor]:
    """The whole path: ``[SEG]`` hidden states → prompts → masks, one tensor per batch row.

    Row ``b`` of ``input_ids``/``hidden`` goes with image ``b``. With ``geometry`` the logits
    come back at the original size ``(n_b, H_b, W_b)``, else low-res ``(n_b, h, w)``. A row with
    no ``[SEG]`` gives ``n_b = 0`` (no mask is forced).
    """
    seg_hidden = gather_seg_hidden(hidden, input_ids, seg_token_id, source)
    prompts = [head(h) for h in seg_hidden]
    low_res = decoder.decode(image_embeddings, prompts)
    if geometry is None:
        return low_res
    if len(geometry) != len(low_res):
        raise ValueError(f"{len(geometry)} geometries for {len(low_res)} images")
    return [decoder.postprocess(lg, g) for lg, g in zip(low_res, geometry)]
