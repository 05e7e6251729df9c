"""A trainable nucleus segmenter: a small U-Net with HoVer-Net-style outputs, pure PyTorch.

The network predicts four dense maps at its working resolution (``UNetConfig.mpp``, by
default 0.5 µm/px, i.e. 20x):

- channel 0: foreground logit (nucleus vs background),
- channels 1-2: horizontal and vertical distance to the nucleus centre of mass, each
  normalised to [-1, 1] inside every nucleus (HoVer-Net, Graham et al. 2019),
- channel 3: distance to the nucleus border, normalised to [0, 1] per nucleus (logit).

Post-processing (:func:`postprocess`) turns the maps into instances with a marker-controlled
watershed: markers are the peaks (h-maxima) of the smoothed border-distance map, the
landscape is that map, and the mask is the thresholded foreground. The h/v maps are
auxiliary training targets (HoVer-Net's supervision); using their gradients to split
markers, as HoVer-Net does, did not help on MoNuSeg (docs/cells-training.md).

The backend registered here, ``"hovernet-lite"``::

    seg = build_segmenter("hovernet-lite", weights="out/cells-monuseg/model.pt")
    labels = seg.segment(rgb, mpp=0.25)          # (H, W) int32

Checkpoints are ``torch.save`` dicts of plain types and tensors (loaded with
``weights_only=True``): ``format``, ``version``, ``model_config``, ``postprocess``, ``mpp``,
``state_dict`` and, for training checkpoints, the optimizer state and step.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathmllm.cells.base import SEGMENTERS, NucleusSegmenter, check_rgb

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pathmllm.cells.hovernet-lite"
CHECKPOINT_VERSION = 1
N_OUTPUTS = 4
#: relative µm/px difference below which an image is not resampled (as the slide pipeline snaps)
MPP_TOLERANCE = 0.02


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message says what was expected."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class UNetConfig:
    """Shape of the network and the resolution it works at."""

    base_channels: int = 12
    """Channels of the first (full-resolution) level; each deeper level doubles them."""
    depth: int = 4
    """Number of 2x down-samplings; inputs are padded to a multiple of ``2**depth``."""
    mpp: float = 0.5
    """µm/px the network sees; images at another µm/px are resampled to it (0.5 ≈ 20x)."""

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.depth < 1:
            raise ValueError(f"base_channels and depth must be >= 1, got {self.base_channels}, {self.depth}")
        if not 0.05 <= self.mpp <= 16:
            raise ValueError(f"mpp must be in 0.05-16 µm/px, got {self.mpp}")


@dataclass
class PostprocessConfig:
    """Turning the dense maps into instances (marker-controlled watershed)."""

    fg_threshold: float = 0.5
    """Foreground probability above which a pixel belongs to a nucleus."""
    marker_method: str = "hmaxima"
    """How nucleus markers are found in the (smoothed) border-distance map: ``hmaxima``
    (regional maxima at least ``marker_h`` above their surroundings) or ``threshold``
    (connected regions above ``marker_threshold``)."""
    marker_h: float = 0.05
    """``hmaxima``: how far (in border-distance units, 0-1) a peak must rise above the saddle
    to a neighbouring peak to count as its own nucleus."""
    marker_min: float = 0.2
    """``hmaxima``: peaks lower than this are not markers."""
    marker_threshold: float = 0.45
    """``threshold``: border distance above which a pixel is part of a marker."""
    smooth_sigma: float = 1.0
    """Gaussian sigma (network pixels) applied to the border-distance map first."""
    min_area_um2: float = 3.0
    """Instances (and markers) smaller than this many µm² are dropped (3 µm² ≈ 48 px at 40x)."""
    fill_holes: bool = True
    """Fill holes inside each instance."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PostprocessConfig:
        return _from_dict(cls, d or {})


@dataclass
class InferenceConfig:
    """Sliding-window inference."""

    tile_size: int = 512
    """Tile side in network pixels (a multiple of ``2**depth``)."""
    overlap: int = 64
    """Overlap between neighbouring tiles in network pixels; outputs are blended over it."""
    batch_size: int = 4
    """Tiles per forward pass."""
    tta: bool = False
    """Test-time augmentation: average the maps over the 4 flips (4x the compute)."""


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


# --------------------------------------------------------------------------------------------
# model


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class HoverUNet(nn.Module):
    """U-Net (max-pool down, transposed-conv up, skip concatenation) with 4 output maps.

    Input: ``(N, 3, H, W)`` float, RGB already normalised by :func:`normalise` with H, W
    multiples of ``2**depth``. Output: ``(N, 4, H, W)`` raw maps (see the module docstring).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        ch = [self.config.base_channels * 2**i for i in range(self.config.depth + 1)]
        self.encoders = nn.ModuleList([_block(3 if i == 0 else ch[i - 1], ch[i]) for i in range(len(ch))])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in range(self.config.depth)])
        self.decoders = nn.ModuleList([_block(2 * ch[i], ch[i]) for i in range(self.config.depth)])
        self.head = nn.Conv2d(ch[0], N_OUTPUTS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.config.depth
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input height and width must be multiples of {m}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.config.depth)):
            x = self.decoders[i](torch.cat([self.ups[i](x), skips[i]], dim=1))
        return self.head(x)


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """uint8-range RGB (N, 3, H, W) -> roughly zero-mean unit-variance input."""
    return (rgb.float() / 255.0 - 0.5) / 0.25


def activate(raw: torch.Tensor) -> torch.Tensor:
    """Raw network output -> maps: foreground probability, h, v in [-1, 1], border distance in [0, 1]."""
    return torch.cat([torch.sigmoid(raw[:, :1]), raw[:, 1:3].clamp(-1, 1), torch.sigmoid(raw[:, 3:4])], dim=1)


# --------------------------------------------------------------------------------------------
# targets (used by training; here so tests and training share one definition)


def target_maps(labels: np.ndarray) -> np.ndarray:
    """Training targets ``(4, H, W)`` float32 from instance labels: fg, h, v, border distance.

    h/v follow HoVer-Net: the offset from the instance's centre of mass, positive and negative
    sides each scaled to [0, 1] / [-1, 0]. The border distance is the Euclidean distance
    transform of each instance divided by its maximum.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    out = np.zeros((4, *labels.shape), dtype=np.float32)
    out[0] = labels > 0
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)  # 1-px border for the EDT
        mask = labels[sl] == idx
        if not mask.any():
            continue
        rr, cc = np.nonzero(mask)
        cy, cx = rr.mean(), cc.mean()
        ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
        for ch, off in ((1, xs - cx), (2, ys - cy)):
            off = off.astype(np.float32)
            pos, neg = off[mask].max(), -off[mask].min()
            norm = np.where(off > 0, off / max(pos, 1e-6), off / max(neg, 1e-6))
            out[ch][sl][mask] = norm[mask]
        dist = ndi.distance_transform_edt(mask)
        out[3][sl][mask] = (dist / dist.max())[mask]
    return out


# --------------------------------------------------------------------------------------------
# post-processing


def postprocess(maps: np.ndarray, mpp: float, net_mpp: float, config: PostprocessConfig | None = None) -> np.ndarray:
    """Instances ``(H, W)`` int32 from activated maps ``(4, H, W)`` at ``mpp`` µm/px.

    ``net_mpp`` is the network's working µm/px: smoothing is measured in network pixels and
    areas in µm², so the result does not depend on the size the maps were resampled to.
    Only the foreground and border-distance maps are used; h/v are auxiliary training targets.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    cfg = config or PostprocessConfig()
    fg_p, dist = np.asarray(maps[0], dtype=np.float32), np.asarray(maps[3], dtype=np.float32)
    scale = net_mpp / mpp  # input pixels per network pixel
    min_px = max(int(round(cfg.min_area_um2 / (mpp * mpp))), 1)
    fg = fg_p > cfg.fg_threshold
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    fg = _drop_small(ndi.label(fg)[0], min_px) > 0
    sigma = cfg.smooth_sigma * scale
    if sigma > 0:
        dist = ndi.gaussian_filter(dist, sigma)
    if cfg.marker_method == "hmaxima":
        from skimage.morphology import h_maxima

        # on a 0.01 grid: exact enough, and skimage's h_maxima is fast and robust on integers
        q = np.clip(np.round(dist * 100), 0, 100).astype(np.uint8)
        peaks = h_maxima(q, max(int(round(cfg.marker_h * 100)), 1)) > 0
        markers, _ = ndi.label(peaks & fg & (dist > cfg.marker_min))
    elif cfg.marker_method == "threshold":
        markers, _ = ndi.label(fg & (dist > cfg.marker_threshold))
        markers = _drop_small(markers, max(min_px // 8, 1))
    else:
        raise ValueError(f"postprocess.marker_method {cfg.marker_method!r}: choose hmaxima or threshold")
    labels = watershed(-dist, markers=markers, mask=fg)
    # foreground blobs that got no marker become one instance each
    rest, n_rest = ndi.label(fg & (labels == 0))
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    labels = _drop_small(labels, min_px)
    if cfg.fill_holes:
        labels = _fill_holes(labels)
    return _relabel(labels)


def _drop_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Labels with fewer than ``min_px`` pixels set to 0."""
    area = np.bincount(labels.ravel())
    small = area < min_px
    small[0] = False
    return np.where(small[labels], 0, labels) if small.any() else labels


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    out = labels.copy()
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == idx
        filled = ndi.binary_fill_holes(mask)
        hole = filled & ~mask & (labels[sl] == 0)
        if hole.any():
            out[sl][hole] = idx
    return out


def _relabel(labels: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if uniq[0] != 0:
        inv = inv + 1
    return inv.astype(np.int32)


# --------------------------------------------------------------------------------------------
# inference


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _window(size: int, overlap: int) -> torch.Tensor:
    """2-D blending weights: 1 in the middle, linear ramps over ``overlap`` px at the edges."""
    ramp = torch.ones(size)
    if overlap > 0:
        r = (torch.arange(overlap, dtype=torch.float32) + 1) / (overlap + 1)
        ramp[:overlap] = r
        ramp[size - overlap :] = r.flip(0)
    return ramp[:, None] * ramp[None, :]


def _positions(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    pos = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(pos))


@torch.no_grad()
def predict_maps(
    model: HoverUNet,
    images: list[torch.Tensor],
    infer: InferenceConfig | None = None,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Activated maps ``(4, h, w)`` for float RGB images ``(3, h, w)`` (0-255) at the network's µm/px.

    Sliding window over every image, tiles from all images batched together, outputs blended
    with linear ramps over the overlap. Images are reflect-padded so every tile is full size.
    """
    infer = infer or InferenceConfig()
    device = device or next(model.parameters()).device
    m = 2**model.config.depth
    overlap = max(int(infer.overlap), 0)
    results: list[torch.Tensor] = []
    jobs: list[tuple[int, int, int]] = []  # (image index, y, x)
    padded: list[torch.Tensor] = []
    acc: list[torch.Tensor] = []
    wsum: list[torch.Tensor] = []
    tiles: list[int] = []
    for i, img in enumerate(images):
        _, h, w = img.shape
        tile = min(int(infer.tile_size), _ceil_to(max(h, w) + overlap, m))
        tile = max(_ceil_to(tile, m), m)
        ph, pw = max(tile, h + overlap), max(tile, w + overlap)
        top, left = overlap // 2, overlap // 2
        pad = (left, pw - w - left, top, ph - h - top)
        padded.append(_reflect_pad(img, pad))
        acc.append(torch.zeros(N_OUTPUTS, ph, pw))
        wsum.append(torch.zeros(1, ph, pw))
        tiles.append(tile)
        stride = max(tile - overlap, m)
        for y in _positions(ph, tile, stride):
            for x in _positions(pw, tile, stride):
                jobs.append((i, y, x))
    windows = {t: _window(t, min(overlap, t // 2)) for t in set(tiles)}
    model.eval()
    bs = max(int(infer.batch_size), 1)
    # batch tiles of equal size together
    for t in sorted(set(tiles)):
        sel = [j for j in jobs if tiles[j[0]] == t]
        for k in range(0, len(sel), bs):
            chunk = sel[k : k + bs]
            x = torch.stack([padded[i][:, y : y + t, xx : xx + t] for i, y, xx in chunk]).to(device)
            out = _forward(model, normalise(x), infer.tta).cpu()
            win = windows[t]
            for (i, y, xx), o in zip(chunk, out, strict=True):
                acc[i][:, y : y + t, xx : xx + t] += o * win
                wsum[i][:, y : y + t, xx : xx + t] += win
    for i, img in enumerate(images):
        _, h, w = img.shape
        top = left = overlap // 2
        res = acc[i] / wsum[i].clamp_min(1e-6)
        results.append(res[:, top : top + h, left : left + w])
    return results


def _forward(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Activated maps, optionally averaged over flips (h changes sign with a left-right flip,
    v with an up-down flip)."""
    if not tta:
        return activate(model(x).float())
    acc = torch.zeros(x.shape[0], N_OUTPUTS, *x.shape[-2:], device=x.device)
    for dims in ((), (-1,), (-2,), (-2, -1)):
        xx = x.flip(dims) if dims else x
        o = activate(model(xx).float())
        o = o.flip(dims) if dims else o
        if -1 in dims:
            o[:, 1] = -o[:, 1]
        if -2 in dims:
            o[:, 2] = -o[:, 2]
        acc += o
    return acc / 4


def _ceil_to(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


def _reflect_pad(img: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding that also works when the pad exceeds the image (falls back to replicate)."""
    left, right, top, bottom = pad
    _, h, w = img.shape
    if left < w and right < w and top < h and bottom < h:
        return F.pad(img[None], pad, mode="reflect")[0]
    return F.pad(img[None], pad, mode="replicate")[0]


def resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resampling of ``(C, H, W)`` to ``size`` (H, W)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def network_size(shape: tuple[int, int], mpp: float, net_mpp: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` at ``mpp`` once resampled to ``net_mpp`` (unchanged within 2 %)."""
    factor = mpp / net_mpp
    if abs(factor - 1) <= MPP_TOLERANCE:
        return int(shape[0]), int(shape[1])
    return max(int(round(shape[0] * factor)), 1), max(int(round(shape[1] * factor)), 1)


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dict(
    model: HoverUNet, postprocess_config: PostprocessConfig | None = None, **extra: Any
) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes: plain types and tensors only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": asdict(model.config),
        "postprocess": asdict(postprocess_config or PostprocessConfig()),
        "mpp": float(model.config.mpp),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def save_checkpoint(
    path: str | os.PathLike[str], model: HoverUNet, postprocess_config: PostprocessConfig | None = None,
    **extra: Any,
) -> Path:
    """Write the weights, the model config, the post-processing settings and the training µm/px
    atomically (``extra`` may add e.g. the optimizer state)."""
    from pathmllm.utils.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint_dict(model, postprocess_config, **extra), tmp)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a checkpoint dict; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such weights file; expected a checkpoint written by `pathmllm train cells` "
            "(e.g. out/cells-monuseg/model.pt)"
        )
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file such as {path / 'model.pt'}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a foreign file
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]}); "
            f"expected a {CHECKPOINT_FORMAT} checkpoint written by `pathmllm train cells`"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format", "no 'format' key") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (found {got!r}); expected a dict with "
            "format, model_config, mpp and state_dict as written by `pathmllm train cells`"
        )
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {ckpt.get('version')} is newer than this pathmllm reads "
            f"({CHECKPOINT_VERSION}); upgrade pathmllm"
        )
    missing = [k for k in ("model_config", "state_dict", "mpp") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return ckpt


def load_state(model: HoverUNet, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that lists the expected and found shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [(k, expected[k], found[k]) for k in expected if k in found and expected[k] != found[k]]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(f"{k} expected {e} got {g}" for k, e, g in wrong[:5])
                         + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        raise CheckpointError(
            f"{source}: weights do not fit a HoverUNet with {asdict(model.config)}: " + "; ".join(parts)
        )
    model.load_state_dict(state_dict)


def load_model(
    path: str | os.PathLike[str], config: UNetConfig | None = None, device: str | torch.device | None = "cpu"
) -> tuple[HoverUNet, dict[str, Any]]:
    """Model from a checkpoint (with its own config unless ``config`` is given) and the checkpoint dict."""
    ckpt = read_checkpoint(path)
    try:
        cfg = config or _from_dict(UNetConfig, dict(ckpt["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model_config {ckpt['model_config']!r} ({exc})") from exc
    model = HoverUNet(cfg)
    load_state(model, ckpt["state_dict"], str(path))
    return model.to(_device(device)).eval(), ckpt


# --------------------------------------------------------------------------------------------
# the backend


@SEGMENTERS.register(
    "hovernet-lite", needs_weights=True, mpp=0.5, licence="Apache-2.0 (code); weights: yours",
    description="small U-Net with HoVer-Net maps + watershed; train with `pathmllm train cells`",
)
class HoverNetLite(NucleusSegmenter):
    """Trainable U-Net nucleus segmenter (see the module docstring).

    Args:
        weights: a checkpoint written by ``pathmllm train cells`` (``model.pt``, or a training
            checkpoint ``checkpoints/last.pt``). ``None`` builds a randomly initialised
            network (only useful for tests; a warning is logged).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        config: network shape when ``weights`` is ``None``; with weights it overrides the
            checkpoint's (and must then match the weights' shapes).
        postprocess: post-processing settings (a dict or :class:`PostprocessConfig`); fields
            given here override the ones stored in the checkpoint.
        inference: tile size, overlap, batch size and flip test-time augmentation of the
            sliding window (a dict or :class:`InferenceConfig`).
        threads: torch CPU threads for this process (``None`` leaves torch's setting; give 1
            when several worker processes each run a segmenter, as the slide runner does).
    """

    name = "hovernet-lite"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = "cpu",
        config: UNetConfig | dict[str, Any] | None = None,
        postprocess: PostprocessConfig | dict[str, Any] | None = None,
        inference: InferenceConfig | dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(max(int(threads), 1))
        if isinstance(config, dict):
            config = _from_dict(UNetConfig, config)
        self.device = _device(device)
        post: dict[str, Any] = {}
        if weights is None:
            log.warning(
                "hovernet-lite: no weights given, using a randomly initialised network; its output "
                "is meaningless. Train one with `pathmllm train cells` and pass weights=model.pt"
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the same random network every time, without touching global RNG
                self.model = HoverUNet(config or UNetConfig()).to(self.device).eval()
            self.weights: Path | None = None
        else:
            self.model, ckpt = load_model(weights, config=config, device=self.device)
            post = dict(ckpt.get("postprocess") or {})
            self.weights = Path(weights)
        if isinstance(postprocess, PostprocessConfig):
            postprocess = asdict(postprocess)
        post.update(postprocess or {})
        self.postprocess = PostprocessConfig.from_dict(post)
        if isinstance(inference, dict):
            inference = _from_dict(InferenceConfig, inference)
        self.inference = inference or InferenceConfig()

    @classmethod
    def from_model(
        cls, model: HoverUNet, postprocess: PostprocessConfig | None = None, inference: InferenceConfig | None = None,
    ) -> HoverNetLite:
        """Wrap an in-memory network (e.g. during training) without a checkpoint file."""
        self = cls.__new__(cls)
        self.model = model
        self.device = next(model.parameters()).device
        self.weights = None
        self.postprocess = postprocess or PostprocessConfig()
        self.inference = inference or InferenceConfig()
        return self

    @property
    def mpp(self) -> float:
        """µm/px the network works at."""
        return self.model.config.mpp

    def predict_maps(self, images: list[np.ndarray], mpp: float) -> list[np.ndarray]:
        """Activated maps ``(4, H, W)`` at each input's own size and µm/px."""
        if mpp is None or not mpp > 0:
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
        arrays = [check_rgb(im) for im in images]
        todo = [i for i, a in enumerate(arrays) if not _is_blank(a)]
        out: list[np.ndarray] = [np.zeros((N_OUTPUTS, *a.shape[:2]), np.float32) for a in arrays]
        if not todo:
            return out
        tensors = []
        for i in todo:
            t = torch.tensor(arrays[i]).permute(2, 0, 1).float()
            tensors.append(resample(t, network_size(t.shape[-2:], mpp, self.mpp)))
        maps = predict_maps(self.model, tensors, self.inference, self.device)
        for i, m in zip(todo, maps, strict=True):
            out[i] = resample(m, arrays[i].shape[:2]).numpy()
        return out

    def segment(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        return self.segment_batch([rgb], mpp)[0]

    def segment_batch(self, images: list[np.ndarray], mpp: float) -> list[np.ndarray]:
        maps = self.predict_maps(images, mpp)
        return [
            postprocess(m, mpp, self.mpp, self.postprocess) if m[0].any() else np.zeros(m.shape[1:], np.int32)
            for m in maps
        ]


def _is_blank(rgb: np.ndarray) -> bool:
    """Uniform images (all white, all black, a flat fill) have no nuclei."""
    return bool(rgb.size == 0 or int(rgb.max()) - int(rgb.min()) <= 2)


__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "HoverNetLite", "HoverUNet", "InferenceConfig", "PostprocessConfig",
    "UNetConfig", "activate", "load_model", "normalise", "postprocess", "predict_maps", "read_checkpoint",
    "save_checkpoint", "target_maps",
]
