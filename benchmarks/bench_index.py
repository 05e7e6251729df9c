"""Query latency of the vector index (``pathmllm.index.VectorIndex``) against brute-force NumPy.

What is measured, all in one process and one run: ``--n`` vectors of ``--dim`` (default
1,000,000 x 1536, cosine), made in chunks of ``--chunk`` by a fixed random generator:
``x = z @ W + noise`` with ``z`` ~ N(0, I) of ``--latent`` (64) dimensions, ``W`` a fixed random
``(latent, dim)`` matrix scaled to unit variance per coordinate, ``noise`` ~ N(0, ``--noise``^2)
(0.5): embeddings whose neighbourhoods live near a 64-d subspace, like real model embeddings
rather than isotropic noise (on which no approximate index works). Each chunk comes with
metadata (slide, x, y) as the index keeps it. ``--queries`` (100) further samples of the same
distribution are the queries.

For each kind, built through the public API (``create``, ``reserve``, ``add`` per chunk):

* ``flat`` (exact). Its stored, already L2-normalised vectors are viewed as a NumPy array
  without a copy (``VectorIndex.vectors(copy=False)``), and the brute-force reference runs on
  that same memory: ``X @ q`` and ``argpartition`` for one query; ``X @ Q.T`` in blocks of
  rows and a running top-k for a batch. Its top-10 is the ground truth for recall@10. With
  ``--reopen`` the index is also saved, dropped and reopened (timings and file size).
* ``hnsw`` at each ``--ef`` and ``ivf`` at each ``--nprobe`` (the IVF index is trained on the
  first ``--train`` vectors, ``--nlist`` cells): latency and recall@10 against the exact top-10.

Latency: the median of ``--single`` one-query searches (``search_ids``: ids and scores; and,
for ``flat``, ``search``: hits with metadata), and the time of one batch of all queries,
divided by the number of queries. Memory: resident set size after each phase and the
process peak (``ru_maxrss``). Only one index lives at a time: the peak is one index plus a
chunk, about 6.5 GB at 1M x 1536.

Run::

    .venv/bin/python benchmarks/bench_index.py                 # 1M x 1536 (~30-40 min on 2 cores)
    .venv/bin/python benchmarks/bench_index.py --n 100000       # ~2 min
    .venv/bin/python benchmarks/bench_index.py --n 20000 --dim 256 --kinds flat hnsw   # seconds
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, load, machine, median, table  # noqa: E402

from pathmllm.index import IndexParams, VectorIndex  # noqa: E402


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def rss() -> float:
    return float(psutil.Process().memory_info().rss)


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


class Data:
    """The vectors, made (or read from ``--from-npy``) chunk by chunk; never held whole outside an index."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.chunk, self.seed = args.chunk, args.seed
        self.array = None
        if args.from_npy:
            self.array = np.load(args.from_npy, mmap_mode="r")
            self.n = min(args.n, len(self.array) - args.queries)
            self.dim = self.array.shape[1]
            return
        self.n, self.dim, self.latent, self.noise, self.spread = args.n, args.dim, args.latent, args.noise, args.spread
        rng = np.random.default_rng([args.seed, 0])
        w = rng.standard_normal((self.latent, self.dim), dtype=np.float32)
        self.w = w / np.sqrt(self.latent, dtype=np.float32)
        self.centers = rng.standard_normal((args.clusters, self.latent), dtype=np.float32)

    def sample(self, m: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, stream])
        z = self.centers[rng.integers(0, len(self.centers), m)]
        z += self.spread * rng.standard_normal((m, self.latent), dtype=np.float32)
        x = z @ self.w
        x += self.noise * rng.standard_normal((m, self.dim), dtype=np.float32)
        return x

    def queries(self, m: int) -> np.ndarray:
        if self.array is not None:  # rows after the indexed ones
            return np.asarray(self.array[self.n:self.n + m], dtype=np.float32)
        return self.sample(m, stream=10**6)

    def chunks(self, first: int | None = None) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """``(vectors, metadata)`` per chunk; chunk ``i`` is the same on every pass. ``first``: the
        size of the first chunk (IVF training), a multiple of ``chunk``."""
        bounds = list(range(0, self.n, self.chunk)) + [self.n]
        if first:
            bounds = [0] + [b for b in bounds if b >= min(first, self.n)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if self.array is not None:
                x = np.asarray(self.array[a:b], dtype=np.float32)
            else:
                parts = [self.sample(min(self.chunk, b - s), s // self.chunk) for s in range(a, b, self.chunk)]
                x = parts[0] if len(parts) == 1 else np.concatenate(parts)
            ids = np.arange(a, b)
            meta = pa.table({"slide": pa.array([f"slide_{i // 10000:04d}" for i in ids]),
                             "x": pa.array((ids % 100) * 256), "y": pa.array((ids // 100 % 100) * 256)})
            yield x, meta


def numpy_top_k(x: np.ndarray, q: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Exact top-``k`` ids ``(Q, k)`` by inner product, ``X @ Q.T`` in blocks of rows."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(x), block):
        s = q @ x[a:a + block].T  # (Q, block)
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        best_i = np.concatenate([best_i, part + a], 1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def numpy_one(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = x @ q
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.argsort(-s[top])]


def timed(fn: Callable[[int], object], reps: int) -> float:
    return timed_together([fn], reps)[0]


def timed_together(fns: list[Callable[[int], object]], reps: int) -> list[float]:
    """Median seconds of each function, the calls interleaved (so that load from other work on
    the machine falls on all of them alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(reps):
        for j, fn in enumerate(fns):
            t = time.perf_counter()
            fn(i)
            times[j].append(time.perf_counter() - t)
    return [median(t) for t in times]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def build(kind: str, data: Data, args: argparse.Namespace, folder: Path) -> tuple[VectorIndex, float]:
    shutil.rmtree(folder, ignore_errors=True)
    params = IndexParams(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, nlist=args.nlist)
    t0 = time.perf_counter()
    index = VectorIndex.create(folder, data.dim, kind=kind, metric="cosine", model="synthetic", params=params)  # type: ignore[arg-type]
    index.reserve(data.n)
    first = args.train if kind == "ivf" else None
    for x, meta in data.chunks(first):
        index.add(x, meta, model="synthetic")
        del x, meta
        print(f"  {kind}: {len(index):,} / {data.n:,} added, {time.perf_counter() - t0:.0f} s, "
              f"RSS {gib(rss())} GiB", flush=True)
    return index, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--latent", type=int, default=64, help="synthetic data: latent dimensions")
    ap.add_argument("--clusters", type=int, default=1000, help="synthetic data: cluster centres in the latent space")
    ap.add_argument("--spread", type=float, default=1.0, help="synthetic data: cluster spread (centres ~ N(0, 1))")
    ap.add_argument("--noise", type=float, default=0.1, help="synthetic data: isotropic noise in the full space")
    ap.add_argument("--from-npy", type=Path, default=None,
                    help="real vectors (N, D) .npy instead (memory-mapped); the last --queries rows are the queries")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--single", type=int, default=20, help="one-query searches timed per setting")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--hnsw-m", type=int, default=IndexParams.hnsw_m)
    ap.add_argument("--ef-construction", type=int, default=IndexParams.ef_construction)
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4*sqrt(train), at most train/39)")
    ap.add_argument("--train", type=int, default=100_000, help="IVF: vectors in the first (training) chunk")
    ap.add_argument("--reopen", action=argparse.BooleanOptionalAction, default=True,
                    help="save, drop and reopen the flat index (writes n*dim*4 bytes to benchmarks/_work)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for FAISS's OpenMP threads unless the environment sets it (docs/index.md)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)  # read when faiss loads libgomp
    if "flat" not in args.kinds:
        ap.error("--kinds must include flat: it gives the ground truth")
    import faiss

    m = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()) + f", faiss {faiss.__version__}, "
          f"faiss threads {faiss.omp_get_max_threads()}, OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}", flush=True)
    data = Data(args)
    queries = data.queries(args.queries)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    work = WORK / "bench_index"
    rows: list[list[object]] = []
    print(f"{data.n:,} x {data.dim} float32 = {gib(data.n * data.dim * 4)} GiB; {args.queries} queries, k={args.k}",
          flush=True)

    # ---- flat + NumPy -----------------------------------------------------------------
    index, build_s = build("flat", data, args, work / "flat")
    x = index.vectors(copy=False)  # the index's own memory: no copy
    rss_flat = rss()
    truth = numpy_top_k(x, qn, args.k)
    one_ids = numpy_one(x, qn[0], args.k)
    assert set(one_ids) == set(truth[0]), "the two NumPy searches disagree"
    holder: dict[str, np.ndarray] = {}
    np_batch, f_batch = (t / len(qn) for t in timed_together([
        lambda i, xs=x: numpy_top_k(xs, qn, args.k),
        lambda i, ix=index: holder.__setitem__("ids", ix.search_ids(queries, args.k)[1]),
    ], 3))
    ids = holder["ids"]
    np_one, f_one, f_hits = timed_together([
        lambda i, xs=x: numpy_one(xs, qn[i % len(qn)], args.k),
        lambda i, ix=index: ix.search_ids(queries[i % len(queries)], args.k),
        lambda i, ix=index: ix.search(queries[i % len(queries)], args.k),
    ], args.single)
    del x
    rows.append(["numpy (brute force)", "-", "-", f"{1000 * np_one:.1f}", f"{1000 * np_batch:.2f}", "1.000", "1.0x",
                 gib(rss_flat)])
    rows.append(["flat", "-", f"{build_s:.0f}", f"{1000 * f_one:.1f} ({1000 * f_hits:.1f} with metadata)",
                 f"{1000 * f_batch:.2f}", f"{recall(ids, truth):.3f}", f"{np_one / f_one:.1f}x", gib(rss_flat)])
    print(f"  numpy one query {1000 * np_one:.1f} ms, batch {1000 * np_batch:.2f} ms/query; flat "
          f"{1000 * f_one:.1f} ms, batch {1000 * f_batch:.2f} ms/query", flush=True)
    reopen_note = ""
    if args.reopen:
        t = time.perf_counter()
        index.save()
        save_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (work / "flat").iterdir())
        del index
        gc.collect()
        t = time.perf_counter()
        index = VectorIndex.open(work / "flat")
        open_s = time.perf_counter() - t
        same = np.array_equal(index.search_ids(queries[:5], args.k)[1], ids[:5])
        reopen_note = (f"flat index saved in {save_s:.1f} s ({gib(size)} GiB on disk), reopened in {open_s:.1f} s "
                       f"({len(index):,} vectors, same results: {same})")
        print("  " + reopen_note, flush=True)
    del index
    gc.collect()
    shutil.rmtree(work / "flat", ignore_errors=True)

    # ---- approximate kinds ------------------------------------------------------------
    for kind, settings, name in (("hnsw", args.ef, "ef_search"), ("ivf", args.nprobe, "nprobe")):
        if kind not in args.kinds:
            continue
        index, build_s = build(kind, data, args, work / kind)
        rss_kind = rss()
        extra = f" (M={args.hnsw_m}, efC={args.ef_construction})" if kind == "hnsw" else \
            f" (nlist={index.params.nlist}, trained on {min(args.train, data.n):,})"
        for value in settings:
            opts = {name: value}
            one = timed(lambda i, ix=index, o=opts: ix.search_ids(queries[i % len(queries)], args.k, **o),
                        args.single)
            t = time.perf_counter()
            _, ids = index.search_ids(queries, args.k, **opts)
            batch = (time.perf_counter() - t) / len(queries)
            rows.append([kind + extra, f"{name}={value}", f"{build_s:.0f}", f"{1000 * one:.2f}",
                         f"{1000 * batch:.3f}", f"{recall(ids, truth):.3f}", f"{np_one / one:.0f}x", gib(rss_kind)])
            print(f"  {kind} {name}={value}: {1000 * one:.2f} ms, recall@{args.k} {recall(ids, truth):.3f}", flush=True)
        del index
        gc.collect()
        shutil.rmtree(work / kind, ignore_errors=True)

    print()
    print(f"{data.n:,} vectors x {data.dim} (cosine), {args.queries} queries, k={args.k}; load average {load()}; "
          f"peak RSS {gib(peak_rss())} GiB")
    print(table(["index", "setting", "build s", "1 query ms (median)", "batch ms/query", f"recall@{args.k}",
                 "vs numpy (1 query)", "RSS GiB"], rows))
    if reopen_note:
        print(reopen_note)
    print(f"ratio: flat {np_one / f_one:.1f}x NumPy brute force for one query (same data, same run)")


if __name__ == "__main__":
    main()
