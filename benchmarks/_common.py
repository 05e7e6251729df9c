"""Helpers shared by the benchmark scripts: paths, timing statistics, tables, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"  # git-ignored
#: the shared data folder (slides, tiles); override with PATHMLLM_DATA
DATA = Path(os.environ.get("PATHMLLM_DATA", REPO.parent / "shared" / "data"))
EXAMPLE_SLIDE = DATA / "slides" / "CMU-1-Small-Region.svs"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (readable in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = [all(_numeric(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if ra else ("-" * (w + 2)) for w, ra in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _numeric(s: str) -> bool:
    try:
        float(s.replace("x", "").replace("%", "").replace(",", ""))
        return True
    except ValueError:
        return False


def machine() -> dict[str, str]:
    """CPU, memory, Python and library versions, load: what a reader needs to compare numbers."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version(),
            "cpus": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        info["cpu"] = model
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
        info["ram"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    torch = sys.modules.get("torch")  # only when the benchmark already uses it
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    for dist in ("openslide-python", "openslide-bin", "tifffile", "pillow", "numpy", "imagecodecs"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info["load average"] = load()
    return info


def load() -> str:
    """The 1-minute load average: other work on the machine skews timings."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def print_machine() -> None:
    m = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))


def cpu_busy(seconds: float = 3.0) -> float:
    """Fraction of all cores busy over the next ``seconds`` (from /proc/stat; 1-minute load
    average divided by the core count where there is none)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
        return 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)


def wait_for_idle(max_busy: float, timeout_s: float) -> bool:
    """Wait until less than ``max_busy`` of the cores are in use (other jobs on a shared machine
    take the cores a parallel run needs); False if that did not happen within ``timeout_s``."""
    t0 = time.monotonic()
    while (busy := cpu_busy()) >= max_busy:
        if time.monotonic() - t0 > timeout_s:
            print(f"cores still {100 * busy:.0f}% busy after {timeout_s:.0f} s; running anyway", flush=True)
            return False
        time.sleep(5)
    return True
