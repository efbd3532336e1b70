"""What a step holds at its peak, tensor by tensor: each storage live at the peak tensor bytes, named by the op and
the source line (the innermost frame outside torch) that allocated it. A diagnostic: the totals are those of
`storage_tracker`, the naming costs a stack walk per op.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revbench.measure.categories import StateTensors, categorize, storage_key
from revbench.measure.storage_tracker import StorageTracker

# Frames in these directories are the machinery, not who asked for the tensor.
_MACHINERY = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


@dataclass(frozen=True)
class PeakTensor:
    category: str  # params, grads, optimizer for the model states; workspace or activations for temporaries
    phase: str | None  # the step phase it was allocated in (None: before the step, the model states)
    origin: str  # 'file.py:line function' of the innermost frame outside torch, or 'model state'
    op: str  # the aten op that allocated it
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


def _origin() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_MACHINERY):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"


class _NamingTracker(StorageTracker):
    def __init__(self) -> None:
        super().__init__()
        self.names: dict[int, tuple[str, str, tuple[int, ...], str]] = {}  # serial -> (origin, op, shape, dtype)
        self._op = "model state"

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self._op = str(func.overloadpacket.__name__)
        return super().__torch_dispatch__(func, types, args, kwargs)

    def track(self, t: torch.Tensor) -> None:
        super().track(t)
        key = storage_key(t)
        serial = (self.live.get(key) or self.host_live[key])[1]
        if serial not in self.names:  # named once, by serial: a storage key is reused once its storage is freed
            origin = "model state" if self._op == "model state" else _origin()
            self.names[serial] = (origin, self._op, tuple(t.shape), str(t.dtype).removeprefix("torch."))


def peak_tensors(fn: Callable[[], Any], state_tensors: Callable[[], StateTensors]) -> list[PeakTensor]:
    """Run `fn` and list every storage live at its peak, largest first."""
    tracker = _NamingTracker()
    states = state_tensors()
    before = categorize(states)
    for tensors in states.values():
        for t in tensors:
            tracker.track(t)
    del states
    with tracker:
        fn()
    tracker.finish()
    rows = [PeakTensor(category, tracker.phases[serial], *tracker.names[serial], nbytes)
            for _, nbytes, serial, category, _ in tracker.peak_storages(before, categorize(state_tensors()))]
    return sorted(rows, key=lambda r: -r.nbytes)
