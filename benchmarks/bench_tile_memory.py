"""Peak memory of tiling (``pathmllm slide tile``) against slide size.

What is measured: for each synthetic pyramid (``synthetic_slide.py``: 0.25 µm/px, JPEG tiles,
reduced levels at downsample 4, 16, ...), one fresh child process runs

    pathmllm slide tile SLIDE --out OUT --workers 1 --force --json

(tissue detection, thumbnail, patch grid at 0.5 µm/px / 256 px, coords.h5, regions,
overlay). A minimal launcher interpreter starts it and reads its peak resident memory with
``os.wait4`` (the kernel's ``ru_maxrss`` of exactly that process; ``--workers 1`` keeps the
work in it). The launcher matters: a child's ``ru_maxrss`` starts at the RSS of the process
that forked it, so forking from this benchmark (hundreds of MB after writing a slide) would
inflate the numbers. Each child runs alone, so the numbers do not mix. Also reported: wall
time, patches, and the same peak for ``pathmllm slide info SLIDE`` (start-up, imports and
opening the slide), so the part that tiling adds is visible. ``--trace`` also samples the
child's memory every 20 ms to show when it peaks.

Run::

    .venv/bin/python benchmarks/bench_tile_memory.py            # 20000 and 80000 px, 3 runs each
    .venv/bin/python benchmarks/bench_tile_memory.py --quick    # 1 run each (~1 min, slides cached)
    .venv/bin/python benchmarks/bench_tile_memory.py --sizes 20000 40000 80000 --trace

Target (issue): peaks of the 20000 and 80000 px slides differ by less than 200 MB and both
stay under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from _common import WORK, median, print_machine, table
from synthetic_slide import synthetic_slide

from pathmllm.wsi.store import SlideStore

CLI = Path(sys.executable).with_name("pathmllm")
OUT = WORK / "bench_tile_memory"
MB = 1e6  # the target is in MB; 1 MB = 10^6 bytes
DIFF_TARGET_MB = 200.0
PEAK_TARGET_MB = 1500.0


@dataclass
class Run:
    peak_mb: float
    seconds: float
    trace: list[tuple[float, float]]  # (seconds since start, RSS MB)


#: a minimal interpreter that starts ``argv[2:]`` and writes its exit code and peak RSS to ``argv[1]``.
#: A child's ru_maxrss starts from the RSS of the process that forked it, so the measured
#: command must not be forked from this (large) benchmark process, but from a small one.
LAUNCHER = (
    "import json, os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'code': os.waitstatus_to_exitcode(status), 'maxrss_kb': usage.ru_maxrss}, f)\n"
)


def run_child(cmd: list[str], trace: bool = False) -> Run:
    """Run ``cmd`` alone and return its peak RSS (``ru_maxrss`` via ``wait4``) and wall time."""
    report = OUT / f".rusage-{os.getpid()}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        try:
            launcher = psutil.Process(proc.pid)
            while not stop.is_set():
                kids = launcher.children()
                if kids:
                    samples.append((time.perf_counter() - t0, kids[0].memory_info().rss / MB))
                stop.wait(0.02)
        except psutil.Error:
            return

    sampler = threading.Thread(target=sample, daemon=True)
    if trace:
        sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    result = json.loads(report.read_text()) if report.exists() else {"code": proc.returncode, "maxrss_kb": 0}
    report.unlink(missing_ok=True)
    if proc.returncode != 0 or result["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result['code']}):\n{err.decode()[-2000:]}")
    return Run(result["maxrss_kb"] * 1024 / MB, seconds, samples)  # ru_maxrss is in KiB on Linux


def n_patches(out: Path, slide: Path) -> int:
    stores = list((out / slide.name.rsplit(".", 1)[0]).iterdir())
    coords, _ = SlideStore.open(stores[0]).coords()
    return len(coords)


def tile_cmd(slide: Path, out: Path) -> list[str]:
    return [str(CLI), "slide", "tile", str(slide), "--out", str(out), "--workers", "1", "--force", "--json"]


def print_trace(label: str, trace: list[tuple[float, float]]) -> None:
    """A coarse text plot: RSS every ~0.5 s."""
    if not trace:
        return
    print(f"  RSS over time, {label} (s: MB):")
    step = max(1, len(trace) // 40)
    print("   " + "  ".join(f"{t:.1f}:{m:.0f}" for t, m in trace[::step]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run per size")
    ap.add_argument("--runs", type=int, help="runs per size (default 3, --quick 1)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000], help="slide sides, px")
    ap.add_argument("--trace", action="store_true", help="sample RSS every 20 ms and print it")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    print_machine()
    rows = []
    peaks: dict[int, float] = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        slide = synthetic_slide(size)
        made = time.perf_counter() - t0
        if made > 1:
            print(f"wrote {slide.name} in {made:.1f} s")
        out = OUT / str(size)
        shutil.rmtree(out, ignore_errors=True)
        info = run_child([str(CLI), "slide", "info", str(slide), "--json"])
        tiles = [run_child(tile_cmd(slide, out), trace=args.trace) for _ in range(runs)]
        peak = max(r.peak_mb for r in tiles)
        peaks[size] = peak
        n = n_patches(out, slide)
        summary = json.loads((out / "summary.json").read_text())
        assert not summary.get("failures") and summary.get("n_done", 1), summary
        rows.append([
            f"{size}x{size}", f"{slide.stat().st_size / 2**20:.0f} MiB", n,
            " ".join(f"{r.peak_mb:.0f}" for r in tiles), f"{peak:.0f}", f"{info.peak_mb:.0f}",
            f"{peak - info.peak_mb:.0f}", f"{median([r.seconds for r in tiles]):.1f}",
        ])
        print(f"{slide.name}: peak {peak:.0f} MB, {n} patches", flush=True)
        if args.trace:
            print_trace(slide.name, tiles[0].trace)
    print()
    print(table(["slide (px)", "file", "patches", "peak RSS per run (MB)", "peak MB", "`slide info` MB",
                 "tiling adds MB", "median s"], rows))
    print()
    lo, hi = min(args.sizes), max(args.sizes)
    diff = peaks[hi] - peaks[lo]
    worst = max(peaks.values())
    met = abs(diff) < DIFF_TARGET_MB and worst < PEAK_TARGET_MB
    print(f"peak {hi}px - {lo}px: {diff:+.0f} MB (target < {DIFF_TARGET_MB:.0f}); highest peak {worst:.0f} MB "
          f"(target < {PEAK_TARGET_MB:.0f}); ratio {peaks[hi] / peaks[lo]:.2f}x: targets {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
