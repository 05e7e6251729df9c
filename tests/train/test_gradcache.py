"""GradCache: the chunked step gives the loss and gradients of the plain full-batch step
(dropout replayed), in one process and on 2 gloo processes under DDP with ``no_sync``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from pathmllm.losses import InfoNCEConfig, info_nce  # noqa: E402
from pathmllm.train.gradcache import GradCache, RandomState, split_into_chunks  # noqa: E402
from tests.distributed import run_gloo  # noqa: E402

BATCH, CHUNK, DIM_IN, DIM_OUT, N_NEG = 8, 2, 6, 8, 2


class Tiny(nn.Module):
    """Linear, dropout, tanh, linear: ``(n, 6) -> (n, 8)``."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.inp = nn.Linear(DIM_IN, 16)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(16, DIM_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.drop(self.inp(x))))


def _model(dropout: float = 0.3) -> Tiny:
    torch.manual_seed(0)
    return Tiny(dropout)


def _inputs(batch: int = BATCH):
    g = torch.Generator().manual_seed(21)
    xq = torch.randn(batch, DIM_IN, generator=g)
    xp = xq + 0.5 * torch.randn(batch, DIM_IN, generator=g)
    xn = torch.randn(batch, N_NEG, DIM_IN, generator=g)
    return xq, xp, xn


def _encode(model):
    return lambda chunk: model(chunk["x"])


def _encode_negatives(model):
    # a chunk holds (chunk, n_neg, dim_in) negatives -> (chunk * n_neg, dim_out)
    return lambda chunk: model(chunk["x"].reshape(-1, DIM_IN))


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.grad.clone() for k, v in model.named_parameters()}


def _plain_step(model, xq, xp, xn, chunk, loss_fn, gather=True):
    """Reference: forward with grad chunk by chunk in GradCache's order (so dropout draws the
    same masks), concatenate, loss on the whole batch, one backward."""
    q = torch.cat([model(x) for x in xq.split(chunk)])
    p = torch.cat([model(x) for x in xp.split(chunk)])
    n = None
    if xn is not None:
        n = torch.cat([model(x.reshape(-1, DIM_IN)) for x in xn.split(chunk)])
    loss = loss_fn(q, p, n)
    loss.backward()
    return loss.detach()


def _gradcache_step(model, xq, xp, xn, chunk, loss_fn, **kwargs):
    cache = GradCache(_encode(model), encode_negative=_encode_negatives(model), loss_fn=loss_fn, **kwargs)
    negatives = None if xn is None else split_into_chunks({"x": xn}, chunk)
    return cache.step(split_into_chunks({"x": xq}, chunk), split_into_chunks({"x": xp}, chunk), negatives)


# --------------------------------------------------------------------------------------------
# one process


@pytest.mark.parametrize("negatives", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_chunked_step_equals_full_batch_with_dropout(negatives: bool, symmetric: bool) -> None:
    xq, xp, xn = _inputs()
    xn = xn if negatives else None
    loss_fn = InfoNCEConfig(temperature=0.05, symmetric=symmetric)

    reference = _model()
    torch.manual_seed(123)
    want = _plain_step(reference, xq, xp, xn, CHUNK, loss_fn)
    after_reference = torch.rand(3)

    model = _model()
    torch.manual_seed(123)
    got = _gradcache_step(model, xq, xp, xn, CHUNK, loss_fn)
    after_gradcache = torch.rand(3)

    assert not got.requires_grad
    assert abs(got.item() - want.item()) < 1e-6
    for key, grad in _grads(reference).items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, atol=1e-6, rtol=1e-5)
    # the RNG continues as after the plain step's forwards, the replays leave no trace
    torch.testing.assert_close(after_gradcache, after_reference, atol=0, rtol=0)


@pytest.mark.gpu
def test_cuda_dropout_is_replayed() -> None:
    xq, xp, xn = (x.cuda() for x in _inputs())
    reference, model = _model().cuda(), _model().cuda()
    torch.manual_seed(7)
    want = _plain_step(reference, xq, xp, xn, CHUNK, info_nce)
    torch.manual_seed(7)
    got = _gradcache_step(model, xq, xp, xn, CHUNK, info_nce)
    assert abs(got.item() - want.item()) < 1e-5
    for key, grad in _grads(reference).items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, atol=1e-5, rtol=1e-4)


def test_dropout_is_active_so_the_comparison_is_not_vacuous() -> None:
    xq, xp, _ = _inputs()
    a, b = _model(), _model()
    torch.manual_seed(123)
    _plain_step(a, xq, xp, None, CHUNK, info_nce)
    torch.manual_seed(124)
    _plain_step(b, xq, xp, None, CHUNK, info_nce)
    assert (a.inp.weight.grad - b.inp.weight.grad).abs().max() > 1e-3


def test_without_dropout_equals_unchunked_forward() -> None:
    xq, xp, xn = _inputs()
    reference = _model(dropout=0.0)
    loss = info_nce(reference(xq), reference(xp), reference(xn.reshape(-1, DIM_IN)))
    loss.backward()

    model = _model(dropout=0.0)
    got = _gradcache_step(model, xq, xp, xn, 3, info_nce)  # chunks of 3, 3, 2
    assert abs(got.item() - loss.item()) < 1e-6
    for key, grad in _grads(reference).items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, atol=1e-6, rtol=1e-5)


def test_gradients_accumulate_like_backward() -> None:
    xq, xp, _ = _inputs()
    reference, model = _model(), _model()
    for seed in (1, 2):
        torch.manual_seed(seed)
        _plain_step(reference, xq, xp, None, CHUNK, info_nce)
        torch.manual_seed(seed)
        _gradcache_step(model, xq, xp, None, CHUNK, info_nce)
    for key, grad in _grads(reference).items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, atol=1e-6, rtol=1e-5)


def test_no_sync_wraps_every_reforward_but_the_last_and_backward_hook() -> None:
    xq, xp, xn = _inputs()
    model = _model()
    state = {"inside": False}
    seen: list[bool] = []
    surrogates: list[torch.Tensor] = []

    @contextlib.contextmanager
    def no_sync():
        state["inside"] = True
        try:
            yield
        finally:
            state["inside"] = False

    def encode(chunk):
        if torch.is_grad_enabled():
            seen.append(state["inside"])
        return model(chunk["x"].reshape(-1, DIM_IN))

    def backward(surrogate: torch.Tensor) -> None:
        assert surrogate.ndim == 0 and surrogate.requires_grad
        surrogates.append(surrogate.detach())
        surrogate.backward()

    cache = GradCache(encode, no_sync=no_sync, backward=backward)
    chunks = [split_into_chunks({"x": x}, CHUNK) for x in (xq, xp, xn)]
    cache.step(*chunks)
    n_chunks = 3 * BATCH // CHUNK
    assert seen == [True] * (n_chunks - 1) + [False]
    assert len(surrogates) == n_chunks


def test_step_inside_no_grad_still_computes_gradients() -> None:
    xq, xp, _ = _inputs()
    reference, model = _model(dropout=0.0), _model(dropout=0.0)
    _plain_step(reference, xq, xp, None, CHUNK, info_nce)
    with torch.no_grad():
        _gradcache_step(model, xq, xp, None, CHUNK, info_nce)
    for key, grad in _grads(reference).items():
        torch.testing.assert_close(model.get_parameter(key).grad, grad, atol=1e-6, rtol=1e-5)


def test_low_precision_representations() -> None:
    xq, xp, _ = _inputs()
    model = _model(dropout=0.0)
    cache = GradCache(lambda chunk: model(chunk["x"]).to(torch.bfloat16))
    loss = cache.step(split_into_chunks({"x": xq}, 4), split_into_chunks({"x": xp}, 4))
    assert loss.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_random_state_replays_cpu_rng() -> None:
    state = RandomState()
    first = torch.rand(4)
    before_replay = torch.get_rng_state()
    with state.replay():
        torch.testing.assert_close(torch.rand(4), first, atol=0, rtol=0)
    assert torch.equal(torch.get_rng_state(), before_replay)


def test_split_into_chunks() -> None:
    batch = {"x": torch.arange(10).reshape(5, 2), "names": list("abcde"), "mode": "train", "n": None}
    chunks = split_into_chunks(batch, 2)
    assert [c["x"].shape[0] for c in chunks] == [2, 2, 1]
    assert [c["names"] for c in chunks] == [["a", "b"], ["c", "d"], ["e"]]
    assert all(c["mode"] == "train" and c["n"] is None for c in chunks)
    torch.testing.assert_close(torch.cat([c["x"] for c in chunks]), batch["x"])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        split_into_chunks(batch, 0)
    with pytest.raises(ValueError, match="differ in length"):
        split_into_chunks({"x": torch.zeros(3, 1), "y": torch.zeros(4, 1)}, 2)
    with pytest.raises(ValueError, match="no tensor or list"):
        split_into_chunks({"mode": "train"}, 2)


def test_errors() -> None:
    xq, xp, _ = _inputs()
    chunks = split_into_chunks({"x": xq}, 4)
    with pytest.raises(ValueError, match=r"must return a \(chunk_size, dim\) tensor"):
        GradCache(lambda chunk: chunk["x"].sum(-1)).step(chunks, chunks)
    with pytest.raises(ValueError, match="no positive chunks"):
        GradCache(lambda chunk: chunk["x"]).step(chunks, [])

    def changing(chunk):  # returns a different shape when called with grad
        return chunk["x"][:1] if torch.is_grad_enabled() else chunk["x"]

    with pytest.raises(RuntimeError, match="same shape both times"):
        GradCache(changing).step(chunks, split_into_chunks({"x": xp}, 4))


# --------------------------------------------------------------------------------------------
# two processes (gloo) under DDP with no_sync


def _seed(rank: int) -> int:
    return 1000 + rank


def _gradcache_worker(rank: int, world_size: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    xq, xp, xn = _inputs()
    rows = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    results = {}
    for negatives in (False, True):
        model = DistributedDataParallel(_model())
        torch.manual_seed(_seed(rank))
        loss = _gradcache_step(
            model, xq[rows], xp[rows], xn[rows] if negatives else None, CHUNK, info_nce,
            no_sync=model.no_sync,
        )
        results[negatives] = {"loss": loss.item(), "grads": _grads(model.module)}
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("gradcache_gloo")
    run_gloo(_gradcache_worker, 2, out, str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("negatives", [False, True])
def test_ddp_gradcache_equals_single_process(distributed_results: list[dict], negatives: bool) -> None:
    xq, xp, xn = _inputs()
    world = len(distributed_results)
    model = _model()
    # replay each rank's forwards (its own RNG stream), then one loss on the global batch
    reps: dict[str, list[torch.Tensor]] = {"q": [], "p": [], "n": []}
    for rank in range(world):
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        torch.manual_seed(_seed(rank))
        reps["q"] += [model(x) for x in xq[rows].split(CHUNK)]
        reps["p"] += [model(x) for x in xp[rows].split(CHUNK)]
        if negatives:
            reps["n"] += [model(x.reshape(-1, DIM_IN)) for x in xn[rows].split(CHUNK)]
    n = torch.cat(reps["n"]) if negatives else None
    loss = info_nce(torch.cat(reps["q"]), torch.cat(reps["p"]), n)
    loss.backward()

    for rank, result in enumerate(distributed_results):
        got = result[negatives]
        assert abs(got["loss"] - loss.item()) < 1e-6, f"rank {rank}"
        for key, grad in _grads(model).items():
            torch.testing.assert_close(got["grads"][key], grad, atol=1e-6, rtol=1e-5)
