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


def interleaved_times(fns: dict, repeats: int = 3, warmup: bool = True, clock=time.perf_counter) -> dict:
    """``{name: median time in seconds}`` of ``repeats`` rounds in which every function of ``fns`` runs
    once, in turn: side by side, so a change of the machine's load falls on all of them alike.
    ``clock``: wall time by default; ``time.process_time`` counts the CPU time of this process only (on one
    thread, the latency of an idle machine, however busy this one is)."""
    if warmup:
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}
