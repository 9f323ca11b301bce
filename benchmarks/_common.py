"""Shared pieces: results, percentiles, process resources read from /proc."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import resource
from dataclasses import dataclass, field

from kiemashup import RateLimits

PAGE = os.sysconf("SC_PAGE_SIZE")

# Only Kie's creation window is lifted (these servers do not enforce it, and a CPU or
# callback figure must not wait 10 s per 20 submits); every other limit -- request
# rate, requests in flight, connections -- is the shipped default.
CREATIONS_UNLIMITED = RateLimits(submits_per_window=10**9, submit_window=10.0)


@dataclass
class Figure:
    """One line of the report: the SDK's value, its target and the same-run baseline."""

    name: str
    value: float
    unit: str
    target: str
    met: bool | None
    baseline: float | None = None
    ratio: float | None = None
    note: str = ""
    gate: float | None = None  # quick mode fails when ratio > gate, unless the value is
    floor: float | None = None  # at or under this floor (a few ms of latency is all noise)
    ceiling: float | None = None  # or at or over this ceiling (a rate far above its target)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def regressed(self) -> bool:
        if self.gate is None or self.ratio is None or self.ratio <= self.gate:
            return False
        if self.floor is not None and self.value <= self.floor:
            return False
        return self.ceiling is None or self.value < self.ceiling


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    return len(asyncio.all_tasks())


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import aiohttp

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
