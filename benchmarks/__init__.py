"""The kiemashup benchmark suite: ``python -m benchmarks`` (or ``--quick``).

Every figure is measured next to a hand-written raw-aiohttp baseline in the same
run; the fake Kie server runs in its own process. See docs/performance.md.
"""

from benchmarks._common import Figure
from benchmarks.polls import simulate_polls

__all__ = ["Figure", "simulate_polls"]
