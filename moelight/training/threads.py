"""How many CPU threads torch uses for a CPU run when the user chose none.

torch starts one intra-op thread per core. On a machine other jobs also use, a thread that is
descheduled stalls the others at every OpenMP barrier, and a 2-core machine under load trains the
quickstart about 2x slower with 2 threads than with 1 (docs/benchmarks.md, "Threads"). So the
default is the cores the others leave idle (from the 1-minute load average), at least one;
`OMP_NUM_THREADS` (or torch.set_num_threads before `fit`) always wins.
"""

from __future__ import annotations

import os

import torch


def idle_cores(cores: int, load: float) -> int:
    """Cores not busy with other work, rounded to the nearest, at least 1 and at most `cores`."""
    return max(1, min(cores, round(cores - load)))


def choose_threads() -> int:
    """Set torch's intra-op threads unless the user set them; returns the number in use."""
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return torch.get_num_threads()
    threads = min(torch.get_num_threads(), idle_cores(cores, load))
    torch.set_num_threads(threads)
    return threads
