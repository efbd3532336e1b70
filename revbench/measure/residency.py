"""Where a step's temporaries live: `host_residency()` marks what is allocated inside it as held in host memory.

An activation offload copies what backward needs out of the accelerator. On a GPU the copies are CPU allocations, apart
from the device by construction; on a CPU run host and device are one memory, so the offload marks its copies, as a
step marks its phases (phases.py), and both byte counts read the mark: the storage tracker as it sees each
allocation, the profiler by time stamp within a `revbench-residency::host` range. Host-resident activations are then
their own figure (`TensorBytes.host_activations`), never part of the device's peak.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from torch.profiler import record_function

HOST_RANGE = "revbench-residency::host"
_depth = 0
_lock = threading.Lock()


@contextlib.contextmanager
def host_residency() -> Iterator[None]:
    """Allocations made inside are host memory (an offload's copies), whatever device the run is on."""
    global _depth
    with _lock:
        _depth += 1
    try:
        with record_function(HOST_RANGE):
            yield
    finally:
        with _lock:
            _depth -= 1


def in_host_residency() -> bool:
    return _depth > 0
