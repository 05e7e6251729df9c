"""The hovernet-lite backend without real data: shapes, targets, post-processing, tiling,
µm/px rescaling, checkpoints and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pathmllm.cells.base import SEGMENTERS  # noqa: E402
from pathmllm.cells.metrics import aji  # noqa: E402
from pathmllm.cells.network import (  # noqa: E402
    CheckpointError,
    HoverNetLite,
    HoverUNet,
    InferenceConfig,
    UNetConfig,
    load_model,
    postprocess,
    predict_maps,
    save_checkpoint,
    target_maps,
)

TINY = UNetConfig(base_channels=4, depth=2, mpp=0.5)


def discs(shape: tuple[int, int], centres: list[tuple[int, int, int]]) -> np.ndarray:
    """Instance labels: disc i+1 at (row, col, radius); later discs win where they overlap."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    lab = np.zeros(shape, dtype=np.int32)
    for i, (r, c, rad) in enumerate(centres, start=1):
        lab[(yy - r) ** 2 + (xx - c) ** 2 <= rad * rad] = i
    return lab


def he_like(labels: np.ndarray) -> np.ndarray:
    """Pink background, purple nuclei."""
    img = np.empty((*labels.shape, 3), dtype=np.uint8)
    img[:] = (235, 200, 220)
    img[labels > 0] = (90, 50, 140)
    return img


def tiny_backend(**kw: object) -> HoverNetLite:
    return HoverNetLite(weights=None, config=TINY, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- model


def test_output_shape_and_size_check() -> None:
    model = HoverUNet(TINY).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 4, 32, 48)
        with pytest.raises(ValueError, match="multiples of 4"):
            model(torch.zeros(1, 3, 30, 32))


def test_registered_with_metadata() -> None:
    entry = SEGMENTERS.entry("hovernet-lite")
    assert entry.obj is HoverNetLite
    assert entry.metadata["needs_weights"] is True


def test_build_segmenter_finds_it(tmp_path: Path) -> None:
    pytest.importorskip("pathmllm.cells.watershed", reason="build_segmenter imports the watershed backend first")
    from pathmllm.cells.base import build_segmenter

    seg = build_segmenter("hovernet-lite", config={"base_channels": 4, "depth": 2})
    assert isinstance(seg, HoverNetLite)


# ---------------------------------------------------------------------------- targets and post-processing


def test_target_maps() -> None:
    lab = discs((40, 60), [(20, 15, 8), (20, 45, 6)])
    t = target_maps(lab)
    assert t.shape == (4, 40, 60) and t.dtype == np.float32
    assert np.array_equal(t[0] > 0, lab > 0)
    assert t[1:3].min() >= -1 and t[1:3].max() <= 1
    # h is negative left of a centre and positive right of it; v likewise top / bottom
    assert t[1, 20, 10] < 0 < t[1, 20, 20] and t[2, 15, 15] < 0 < t[2, 25, 15]
    for i in (1, 2):  # border distance peaks at 1 in every nucleus, 0 outside
        assert t[3][lab == i].max() == pytest.approx(1.0)
    assert (t[1:][:, lab == 0] == 0).all()


@pytest.mark.parametrize("mpp", [0.5, 0.25])
def test_postprocess_separates_touching_nuclei(mpp: float) -> None:
    """Maps made from known instances (two touching, one alone) give those instances back,
    also when the maps were upsampled to 0.25 µm/px for a 0.5 µm/px network."""
    f = int(round(0.5 / mpp))
    lab = discs((64 * f, 96 * f), [(32 * f, 30 * f, 10 * f), (32 * f, 48 * f, 10 * f), (20 * f, 80 * f, 7 * f)])
    maps = target_maps(lab)
    maps[3] = maps[3] ** 0.5  # a network's border-distance map is smooth, not a perfect cone
    pred = postprocess(maps, mpp=mpp, net_mpp=0.5)
    assert pred.dtype == np.int32 and pred.shape == lab.shape
    assert len(np.unique(pred[pred > 0])) == 3
    assert aji(lab, pred) > 0.9


def test_postprocess_empty_and_small() -> None:
    z = np.zeros((4, 32, 32), np.float32)
    assert not postprocess(z, 0.5, 0.5).any()
    speck = z.copy()
    speck[0, 10:11, 10:11] = 1.0  # 0.25 µm² at 0.5 µm/px, below min_area_um2
    speck[3, 10:11, 10:11] = 1.0
    assert not postprocess(speck, 0.5, 0.5).any()


def test_augment_keeps_targets_consistent() -> None:
    """Flipping / rotating the precomputed h/v maps equals recomputing them on the transformed labels."""
    from pathmllm.train.cells import AugmentConfig, augment_pair

    lab = discs((48, 48), [(12, 14, 6), (30, 32, 9), (40, 8, 5)])
    img = np.repeat(lab[None].astype(np.float32), 3, axis=0)  # the "image" carries the labels
    cfg = AugmentConfig(stain_jitter=0, stain_shift=0, brightness=0)
    rng = np.random.default_rng(1)
    for _ in range(12):
        im2, t2 = augment_pair(img, target_maps(lab), rng, cfg)
        np.testing.assert_allclose(t2, target_maps(im2[0].astype(np.int32)), atol=1e-5)


# ---------------------------------------------------------------------------- inference


class _Local(HoverUNet):
    """A network whose output at a pixel depends on that pixel only, so tiling must be exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[:, :1] * 0.5], dim=1)


def test_tiled_inference_equals_one_pass() -> None:
    model = _Local(TINY)
    img = torch.rand(3, 150, 203) * 255
    one = predict_maps(model, [img], InferenceConfig(tile_size=256, overlap=0))[0]
    tiled = predict_maps(model, [img], InferenceConfig(tile_size=48, overlap=16, batch_size=3))[0]
    assert one.shape == tiled.shape == (4, 150, 203)
    torch.testing.assert_close(tiled, one, atol=1e-5, rtol=1e-5)


def test_flip_tta_keeps_an_equivariant_output() -> None:
    model = _Local(TINY)
    img = torch.rand(3, 40, 56) * 255
    plain = predict_maps(model, [img], InferenceConfig(tile_size=64, overlap=0))[0]
    tta = predict_maps(model, [img], InferenceConfig(tile_size=64, overlap=0, tta=True))[0]
    assert tta.shape == plain.shape
    torch.testing.assert_close(tta[[0, 3]], plain[[0, 3]])


def test_segment_shapes_dtype_and_batch() -> None:
    seg = tiny_backend(inference={"tile_size": 64, "overlap": 16, "batch_size": 2})
    imgs = [he_like(discs((70, 90), [(30, 30, 9)])), he_like(discs((50, 40), [(20, 20, 6)]))]
    out = seg.segment_batch(imgs, mpp=0.5)
    assert [o.shape for o in out] == [(70, 90), (50, 40)]
    assert all(o.dtype == np.int32 for o in out)
    for im, o in zip(imgs, out, strict=True):
        np.testing.assert_array_equal(seg.segment(im, mpp=0.5), o)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 1.0])
def test_mpp_rescaling(mpp: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.25 µm/px image reaches a 0.5 µm/px network at half size; labels come back at input size."""
    import pathmllm.cells.network as net

    seen: list[tuple[int, ...]] = []
    real = net.predict_maps

    def spy(model, images, *a, **k):  # type: ignore[no-untyped-def]
        seen.extend(tuple(i.shape) for i in images)
        return real(model, images, *a, **k)

    monkeypatch.setattr(net, "predict_maps", spy)
    seg = tiny_backend()
    img = he_like(discs((120, 160), [(60, 60, 16)]))
    out = seg.segment(img, mpp=mpp)
    assert out.shape == (120, 160) and out.dtype == np.int32
    f = mpp / 0.5
    assert seen == [(3, round(120 * f), round(160 * f))]


def test_blank_and_bad_inputs() -> None:
    seg = tiny_backend()
    for blank in (np.full((64, 64, 3), 255, np.uint8), np.zeros((40, 30, 3), np.uint8)):
        out = seg.segment(blank, mpp=0.25)
        assert out.shape == blank.shape[:2] and out.dtype == np.int32 and not out.any()
    with pytest.raises(ValueError, match="single-channel"):
        seg.segment(np.zeros((32, 32), np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        seg.segment(np.zeros((32, 32, 2), np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match="mpp"):
        seg.segment(np.zeros((32, 32, 3), np.uint8), mpp=0)


def test_no_weights_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        tiny_backend()
    assert "randomly initialised" in caplog.text


# ---------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = HoverUNet(TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = save_checkpoint(tmp_path / "m.pt", model.eval(), postprocess_config=None, step=7)
    img = he_like(discs((80, 100), [(40, 30, 10), (40, 70, 12)]))
    a = HoverNetLite.from_model(model).predict_maps([img], mpp=0.5)[0]
    loaded = HoverNetLite(weights=path)
    assert loaded.model.config == TINY and loaded.mpp == 0.5
    b = loaded.predict_maps([img], mpp=0.5)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(HoverNetLite.from_model(model).segment(img, 0.5), loaded.segment(img, 0.5))
    # post-processing settings given to the constructor override the stored ones
    assert HoverNetLite(weights=path, postprocess={"fg_threshold": 0.7}).postprocess.fg_threshold == 0.7


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such weights file.*pathmllm train cells"):
        HoverNetLite(weights=tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        HoverNetLite(weights=tmp_path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*hovernet-lite"):
        HoverNetLite(weights=text)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "epoch": 3}, other)
    with pytest.raises(CheckpointError, match="not a pathmllm.cells.hovernet-lite checkpoint"):
        HoverNetLite(weights=other)
    bare = tmp_path / "bare.pt"
    torch.save(HoverUNet(TINY).state_dict(), bare)  # a bare state_dict lacks the config
    with pytest.raises(CheckpointError, match="not a pathmllm.cells.hovernet-lite checkpoint"):
        HoverNetLite(weights=bare)


def test_shape_mismatch(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", HoverUNet(TINY))
    with pytest.raises(CheckpointError, match=r"base_channels': 8.*shape mismatch: .* expected \(8, 3, 3, 3\) got \(4, 3, 3, 3\)"):
        HoverNetLite(weights=path, config={"base_channels": 8, "depth": 2})
    with pytest.raises(CheckpointError, match="missing .* tensors"):
        load_model(path, config=UNetConfig(base_channels=4, depth=3))
    # a checkpoint whose stored config disagrees with its own tensors
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["base_channels"] = 6
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        HoverNetLite(weights=tmp_path / "bad.pt")
