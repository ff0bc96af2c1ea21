"""The one timer the benchmark scripts share (they run as ``python benchmarks/NAME.py``, so this
folder is on ``sys.path``)."""

import statistics
import time


def median_time(fn, repeats: int = 3, warmup: bool = False) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` in seconds; ``warmup`` makes one untimed call first."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
