"""InfoNCE against a hand-written NumPy computation, its gradient, its errors, and the
distributed version (2 gloo CPU processes) against the single-process loss and gradients."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pathmllm.losses import InfoNCEConfig, gather_with_grad, info_nce  # noqa: E402
from tests.distributed import run_gloo  # noqa: E402

# --------------------------------------------------------------------------------------------
# an independent reference: NumPy float64, log-softmax written out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


def _log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_info_nce(
    query: np.ndarray,
    positive: np.ndarray,
    negatives: np.ndarray | None = None,
    temperature: float = 0.05,
    symmetric: bool = True,
) -> float:
    """Mean cross-entropy of query i picking positive i among all positives (+ all negatives);
    symmetric: averaged with positive i picking query i among all queries."""
    q, p = _unit(np.asarray(query, np.float64)), _unit(np.asarray(positive, np.float64))
    batch, dim = q.shape
    columns = p
    if negatives is not None:
        columns = np.concatenate([p, _unit(np.asarray(negatives, np.float64).reshape(-1, dim))])
    forward = _log_softmax_rows(q @ columns.T / temperature)
    loss = -np.mean([forward[i, i] for i in range(batch)])
    if symmetric:
        backward = _log_softmax_rows(p @ q.T / temperature)
        loss = (loss - np.mean([backward[i, i] for i in range(batch)])) / 2
    return float(loss)


def _batch(seed: int, batch: int = 6, dim: int = 5, n_neg: int = 3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, dim, generator=g)
    p = q + 0.7 * torch.randn(batch, dim, generator=g)  # related, so the loss is not uniform
    n = torch.randn(batch, n_neg, dim, generator=g)
    return q, p, n


# --------------------------------------------------------------------------------------------
# single process


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("negatives", [None, "3d", "2d"])
def test_info_nce_matches_numpy(temperature: float, symmetric: bool, negatives: str | None) -> None:
    q, p, n = _batch(seed=1)
    neg = {None: None, "3d": n, "2d": n[:, 0]}[negatives]
    got = info_nce(q, p, neg, temperature=temperature, symmetric=symmetric)
    want = reference_info_nce(
        q.numpy(), p.numpy(), None if neg is None else neg.numpy(), temperature, symmetric
    )
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_negatives_of_any_count_and_float64() -> None:
    q, p, n = _batch(seed=2)
    extra = n.reshape(-1, 5)[:7].double()  # 7 negatives for 6 queries
    got = info_nce(q.double(), p.double(), extra, temperature=0.2)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(reference_info_nce(q.numpy(), p.numpy(), extra.numpy(), 0.2), abs=1e-12)


def _reference_with_keys(q, p, n, keys, temperature: float, symmetric: bool) -> float:
    """Loop over rows: a column sharing row i's key (other than i) is dropped from the softmax."""
    q, p = _unit(q.double().numpy()), _unit(p.double().numpy())
    cols = p if n is None else np.concatenate([p, _unit(n.double().numpy().reshape(-1, q.shape[1]))])
    total_f, total_b = 0.0, 0.0
    for i in range(q.shape[0]):
        keep = [j for j in range(cols.shape[0]) if j == i or j >= q.shape[0] or keys[j] != keys[i]]
        logits = q[i] @ cols[keep].T / temperature
        total_f -= logits[keep.index(i)] - np.log(np.exp(logits).sum())
        keep_b = [j for j in range(q.shape[0]) if j == i or keys[j] != keys[i]]
        logits_b = p[i] @ q[keep_b].T / temperature
        total_b -= logits_b[keep_b.index(i)] - np.log(np.exp(logits_b).sum())
    n_rows = q.shape[0]
    return (total_f + total_b) / (2 * n_rows) if symmetric else total_f / n_rows


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_false_negative_keys_match_loop(symmetric: bool, with_negatives: bool) -> None:
    q, p, n = _batch(3, batch=7)
    keys = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    neg = n if with_negatives else None
    got = info_nce(q, p, neg, keys=keys, temperature=0.1, symmetric=symmetric)
    want = _reference_with_keys(q, p, neg, keys.tolist(), 0.1, symmetric)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # all keys distinct: same as no keys
    plain = info_nce(q, p, neg, temperature=0.1, symmetric=symmetric)
    assert info_nce(q, p, neg, keys=torch.arange(7), temperature=0.1, symmetric=symmetric).item() == pytest.approx(
        plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="one id per row"):
        info_nce(q, p, keys=torch.arange(3))


def test_default_temperature_is_0_05() -> None:
    assert inspect.signature(info_nce).parameters["temperature"].default == 0.05
    assert InfoNCEConfig().temperature == 0.05
    q, p, n = _batch(seed=3)
    assert info_nce(q, p).item() == pytest.approx(reference_info_nce(q.numpy(), p.numpy()), rel=1e-5)
    cfg = InfoNCEConfig(temperature=0.3, symmetric=False)
    assert cfg(q, p, n).item() == pytest.approx(
        reference_info_nce(q.numpy(), p.numpy(), n.numpy(), 0.3, symmetric=False), rel=1e-5
    )


def test_cosine_scale_invariance_and_tensor_temperature() -> None:
    q, p, n = _batch(seed=4)
    base = info_nce(q, p, n)
    assert info_nce(3 * q, 0.5 * p, 10 * n).item() == pytest.approx(base.item(), rel=1e-5)
    t = torch.tensor(0.05, requires_grad=True)
    loss = info_nce(q, p, n, temperature=t)
    loss.backward()
    assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    assert t.grad is not None and torch.isfinite(t.grad)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_float64(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    p = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    n = torch.randn(3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)

    def fn(q, p, n):
        return info_nce(q, p, n, temperature=0.5, symmetric=symmetric)

    assert torch.autograd.gradcheck(fn, (q, p, n), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda q, p: info_nce(q, p, temperature=0.5), (q, p))


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


@pytest.mark.parametrize(
    ("query", "positive", "negatives", "message"),
    [
        ((4,), (4,), None, "query must be"),
        ((4, 3), (5, 3), None, "positive must have"),
        ((0, 3), (0, 3), None, "empty"),
        ((4, 3), (4, 3), (4, 2, 5), "3-d negatives"),
        ((4, 3), (4, 3), (3, 2, 3), "3-d negatives"),
        ((4, 3), (4, 3), (6, 4), "negatives must be"),
        ((4, 3), (4, 3), (6,), "negatives must be"),
    ],
)
def test_bad_shapes_raise(query, positive, negatives, message) -> None:
    neg = None if negatives is None else torch.randn(negatives)
    with pytest.raises(ValueError, match=message):
        info_nce(torch.randn(query), torch.randn(positive), neg)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_bad_temperature_raises(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCEConfig(temperature=temperature)


# --------------------------------------------------------------------------------------------
# two processes (gloo) against one process on the global batch

GLOBAL, DIM_IN, DIM_OUT, N_NEG = 8, 6, 5, 2
#: name -> (rows of rank 0 (rank 1 gets the rest), negatives, symmetric, temperature)
SCENARIOS = {
    "symmetric": (4, None, True, 0.05),
    "hard-negatives-3d": (4, "3d", True, 0.05),
    "asymmetric-2d-negatives": (4, "2d", False, 0.1),
    "unequal-sizes": (3, "3d", True, 0.07),
    "unequal-sizes-2d-negatives": (5, "2d", False, 0.05),
    "false-negative-keys": (3, "2d", True, 0.05),
}
#: scenarios whose positives carry keys (false negatives masked): the keys of the global batch
KEYS = {"false-negative-keys": torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])}


def _global_inputs():
    g = torch.Generator().manual_seed(11)
    xq = torch.randn(GLOBAL, DIM_IN, generator=g)
    xp = xq + 0.5 * torch.randn(GLOBAL, DIM_IN, generator=g)
    xn = torch.randn(GLOBAL, N_NEG, DIM_IN, generator=g)
    return xq, xp, xn


def _encoder():
    torch.manual_seed(0)
    return torch.nn.Linear(DIM_IN, DIM_OUT)


def _loss_on(encoder, xq, xp, xn, negatives, symmetric, temperature, gather=True, keys=None):
    """Encode queries, positives and negatives in one forward (one DDP forward per backward)."""
    rows = [xq, xp]
    if negatives == "3d":
        rows.append(xn.reshape(-1, DIM_IN))
    elif negatives == "2d":
        rows.append(xn[:, 0])
    z = encoder(torch.cat(rows))
    q, p = z[: len(xq)], z[len(xq) : 2 * len(xq)]
    n = None
    if negatives == "3d":
        n = z[2 * len(xq) :].reshape(len(xq), N_NEG, DIM_OUT)
    elif negatives == "2d":
        n = z[2 * len(xq) :]
    return info_nce(q, p, n, temperature=temperature, symmetric=symmetric, gather=gather, keys=keys)


def _losses_worker(rank: int, world_size: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    xq, xp, xn = _global_inputs()
    results = {}
    for name, (first, negatives, symmetric, temperature) in SCENARIOS.items():
        rows = slice(0, first) if rank == 0 else slice(first, GLOBAL)
        model = DistributedDataParallel(_encoder())
        keys = KEYS[name][rows] if name in KEYS else None
        loss = _loss_on(model, xq[rows], xp[rows], xn[rows], negatives, symmetric, temperature, keys=keys)
        loss.backward()
        results[name] = {
            "loss": loss.item(),
            "grads": {k: v.grad.clone() for k, v in model.module.named_parameters()},
        }
        # without gather: the plain local loss
        local = _loss_on(_encoder(), xq[rows], xp[rows], xn[rows], negatives, symmetric,
                         temperature, gather=False, keys=keys)
        results[name]["local_loss"] = local.item()
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("info_nce_gloo")
    run_gloo(_losses_worker, 2, out, str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gathered_loss_and_ddp_gradients_equal_single_process(
    distributed_results: list[dict], name: str
) -> None:
    first, negatives, symmetric, temperature = SCENARIOS[name]
    xq, xp, xn = _global_inputs()
    encoder = _encoder()
    loss = _loss_on(encoder, xq, xp, xn, negatives, symmetric, temperature, keys=KEYS.get(name))
    loss.backward()
    # the single-process value is itself the NumPy reference
    with torch.no_grad():
        w, b = encoder.weight, encoder.bias
        neg = {None: None, "3d": xn @ w.T + b, "2d": xn[:, 0] @ w.T + b}[negatives]
        if name in KEYS:
            want = _reference_with_keys(xq @ w.T + b, xp @ w.T + b, neg, KEYS[name].tolist(), temperature,
                                        symmetric)
        else:
            want = reference_info_nce(
                (xq @ w.T + b).numpy(), (xp @ w.T + b).numpy(),
                None if neg is None else neg.numpy(), temperature, symmetric,
            )
    assert loss.item() == pytest.approx(want, rel=1e-5)

    for rank, result in enumerate(distributed_results):
        got = result[name]
        assert abs(got["loss"] - loss.item()) < 1e-6, f"rank {rank}"
        for key, param in encoder.named_parameters():
            torch.testing.assert_close(got["grads"][key], param.grad, atol=1e-6, rtol=1e-5)
        rows = slice(0, first) if rank == 0 else slice(first, GLOBAL)
        local = _loss_on(_encoder(), xq[rows], xp[rows], xn[rows], negatives, symmetric, temperature,
                         keys=KEYS[name][rows] if name in KEYS else None)
        assert got["local_loss"] == pytest.approx(local.item(), abs=1e-6)
        assert abs(got["local_loss"] - loss.item()) > 1e-3  # gathering changes the loss
