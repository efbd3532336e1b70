"""Peak live tensor bytes by tracking storages in a TorchDispatchMode.

The independent cross-check of `profiler_bytes`, and the only route that works on fake tensors, where
nothing is allocated (`revbench estimate`). Each new storage gets a weakref finalizer that retires it.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from revbench.measure.categories import (
    CATEGORIES,
    STATE_CATEGORIES,
    StateTensors,
    TensorBytes,
    categorize,
    host_fields,
    host_keys,
    storage_key,
    temporary_category,
)
from revbench.measure.phases import current_phase
from revbench.measure.residency import in_host_residency

_NONE = object()  # no phase's peak is rising (a phase may be None: outside the step's phases)
# `torch.tensor(...)` allocates outside the dispatcher and only then passes through lift_fresh (an alias by its
# schema), so its output is new to the tracker.
_LIFTED = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


@functools.cache
def may_allocate(func: Any) -> bool:
    """Whether `func` can return a tensor on a storage none of its inputs has. Views, in-place and out= ops return
    aliases of their inputs, and ops like `prim.device` no tensor: most of a step's ops, skipped unflattened."""
    schema = getattr(func, "_schema", None)
    if func in _LIFTED or schema is None:
        return True
    return any(r.alias_info is None and "Tensor" in str(r.type) for r in schema.returns)


def memory_tensors(values: Any) -> Iterator[torch.Tensor]:
    """The tensors that hold memory in `values` (any nesting). A wrapper subclass holds none itself: a DTensor's
    (FSDP2's sharded parameters, AdamW's states on them) is its local tensor, whose ops run below this mode."""
    for t in tree_flatten(values)[0]:
        if not isinstance(t, torch.Tensor):
            continue
        if is_traceable_wrapper_subclass(t):
            yield from memory_tensors([getattr(t, name) for name in t.__tensor_flatten__()[0]])
        else:
            yield t


_ACTIVE: list[StorageTracker] = []  # the trackers whose step is running


def mark_live() -> None:
    """Note this moment in the running trackers: each keeps the live storages of its fullest marked moment."""
    for tracker in _ACTIVE:
        tracker.mark()


class StorageTracker(TorchDispatchMode):
    """Tracks every storage an op creates, plus storages registered up front, and records the peak."""

    def __init__(self, by_phase: bool = False, timeline: bool = False) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (bytes, serial of its allocation)
        self.current = self.peak = 0
        self.peak_live: dict[int, tuple[int, int]] = {}
        self.phases: dict[int, str | None] = {}  # serial -> the step phase it was allocated in
        self.peak_phase: str | None = None
        self._rising = False
        # by_phase: each phase's own peak and the storages live at it, in the order the phases first allocate
        self.by_phase = by_phase
        self.phase_peaks: dict[str | None, int] = {}
        self.phase_live: dict[str | None, dict[int, tuple[int, int]]] = {}
        self._phase_rising: str | object | None = _NONE
        self._serials = itertools.count()
        self._finalizers: list[weakref.finalize] = []
        # timeline: every allocation and free in order, (serial, +bytes or -bytes, the phase then), and each
        # serial's storage key, from which measure/timeline.py draws the live bytes by category at every event
        self.events: list[tuple[int, int, str | None]] | None = [] if timeline else None
        self.keys: dict[int, int] = {}
        self.step_start = 0  # the first event of the step; those before register the model states
        # Activations an offload moved to host memory (measure/residency.py): apart from `live`, their own peak.
        self.host_live: dict[int, tuple[int, int]] = {}
        self.host_current = self.host_peak = 0
        self.host_serials: set[int] = set()
        # mark(): the live storages at the marked moment that held the most (a moment a layout model places)
        self.mark_current = -1
        self.mark_live: dict[int, tuple[int, int]] | None = None

    def __enter__(self) -> StorageTracker:
        # FSDP2 frees a layer's gathered weights by resizing their storage to 0 bytes and allocates them again by
        # resizing it back, in place and outside the dispatcher: the tracker hears of it through resize_ itself.
        self._resize = torch.UntypedStorage.resize_

        def resize_(storage: torch.UntypedStorage, size: int) -> torch.UntypedStorage:
            out = self._resize(storage, size)
            self.resized(storage)
            return out

        torch.UntypedStorage.resize_ = resize_
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.UntypedStorage.resize_ = self._resize
        _ACTIVE.remove(self)
        super().__exit__(*exc)

    def mark(self) -> None:
        if self.current > self.mark_current:
            self.mark_current, self.mark_live = self.current, dict(self.live)

    def resized(self, storage: torch.UntypedStorage) -> None:
        """A storage resized in place: its old block freed, and a new one allocated unless it is now empty."""
        if storage._cdata in self.live:
            self._release(storage._cdata)
        if storage.nbytes():
            self._track(storage)

    def track(self, t: torch.Tensor) -> None:
        self._track(t.untyped_storage())

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata  # measure.categories.storage_key
        if key in self.live or key in self.host_live:
            return
        nbytes, serial, phase = storage.nbytes(), next(self._serials), current_phase()
        if in_host_residency():
            self._track_host(storage, key, nbytes, serial, phase)
            return
        if self._phase_rising is not _NONE and self._phase_rising != phase:
            self._keep_phase_peak()  # another phase allocates: the rising one's peak is the state before it
        self.live[key] = (nbytes, serial)
        self.phases[serial] = phase
        self.current += nbytes
        if self.current > self.peak:
            self.peak, self._rising, self.peak_phase = self.current, True, phase
        if self.by_phase and self.current > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase], self._phase_rising = self.current, phase
        self._finalizers.append(weakref.finalize(storage, self._release, key))
        if self.events is not None:
            self.events.append((serial, nbytes, phase))
            self.keys[serial] = key

    def _track_host(self, storage: torch.UntypedStorage, key: int, nbytes: int, serial: int, phase: str | None
                    ) -> None:
        self.host_live[key] = (nbytes, serial)
        self.host_serials.add(serial)
        self.host_current += nbytes
        self.host_peak = max(self.host_peak, self.host_current)
        self._finalizers.append(weakref.finalize(storage, self._release, key))
        if self.events is not None:
            self.events.append((serial, nbytes, phase))
            self.keys[serial] = key

    def _keep_phase_peak(self) -> None:
        self.phase_live[self._phase_rising], self._phase_rising = dict(self.live), _NONE

    def _release(self, key: int) -> None:
        if key in self.host_live:
            nbytes, serial = self.host_live.pop(key)
            self.host_current -= nbytes
            if self.events is not None:
                self.events.append((serial, -nbytes, current_phase()))
            return
        if self._rising:  # the state just before the first free after a rise is the peak state
            self.peak_live, self._rising = dict(self.live), False
        if self._phase_rising is not _NONE:
            self._keep_phase_peak()
        nbytes, serial = self.live.pop(key, (0, -1))
        self.current -= nbytes
        if self.events is not None and serial >= 0:
            self.events.append((serial, -nbytes, current_phase()))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not may_allocate(func):
            return out
        inputs = set() if func in _LIFTED else {storage_key(t) for t in memory_tensors((args, kwargs))}
        for t in memory_tensors(out):
            if storage_key(t) not in inputs:
                self.track(t)
        return out

    def finish(self) -> None:
        if self._rising:
            self.peak_live = dict(self.live)
        if self._phase_rising is not _NONE:
            self._keep_phase_peak()
        for finalizer in self._finalizers:
            finalizer.detach()

    def peak_storages(self, before: dict, after: dict, live: dict[int, tuple[int, int]] | None = None
                      ) -> Iterator[tuple[int, int, int, str, bool]]:
        """(key, bytes, serial, category, survives) of every storage live at the peak (or in `live`, e.g. at one
        phase's peak). A storage that outlives the step takes its model-state category (from `categorize` after
        the step, else before it); a temporary is `workspace` or `activations` by the phase that allocated it."""
        for key, (nbytes, serial) in (self.peak_live if live is None else live).items():
            survives = self.survives(key, serial)
            yield key, nbytes, serial, self.category(key, serial, survives, before, after), survives

    def survives(self, key: int, serial: int) -> bool:
        """Whether the storage allocated as `serial` is still live after the step."""
        return self.live.get(key, (0, -1))[1] == serial

    def category(self, key: int, serial: int, survives: bool, before: dict, after: dict) -> str:
        category = after.get(key, before.get(key, ("activations", 0)))[0] if survives else "activations"
        return temporary_category(self.phases[serial]) if category == "activations" else category


def measure_peak_bytes_tracked(
    fn: Callable[[], Any], state_tensors: Callable[[], StateTensors]
) -> tuple[Any, TensorBytes]:
    """Run `fn` under a StorageTracker and return its result and the peak tensor bytes by category, with
    host-resident states named and the step phase of the peak."""
    step = track_step(fn, state_tensors, by_phase=False)
    return step.result, step.breakdown(None, step.tracker.peak_phase)


def measure_phase_peaks_tracked(
    fn: Callable[[], Any], state_tensors: Callable[[], StateTensors]
) -> tuple[Any, dict[str | None, TensorBytes]]:
    """Run `fn` under a StorageTracker and return its result and each step phase's own peak by category, in the
    order the phases first allocated. The largest (the first of equals) is what measure_peak_bytes_tracked gives."""
    step = track_step(fn, state_tensors, by_phase=True)
    return step.result, step.phase_peaks()


@dataclass
class TrackedStep:
    """A step run under a tracker, with the model states' storages before and after it (key -> category) and the
    keys of those in host memory."""

    result: Any
    tracker: StorageTracker
    before: dict
    after: dict
    host: set

    def breakdown(self, live: dict | None, phase: str | None) -> TensorBytes:
        """The live set `live` (the peak's where None) by category, host-resident states apart."""
        by_category = dict.fromkeys(CATEGORIES, 0)
        on_host = dict.fromkeys(STATE_CATEGORIES, 0)
        for key, nbytes, _, category, survives in self.tracker.peak_storages(self.before, self.after, live):
            by_category[category] += nbytes
            if survives and key in self.host:
                on_host[category] += nbytes
        return TensorBytes(**by_category, **host_fields(on_host), phase=phase, method="storage-tracker",
                           host_activations=self.tracker.host_peak)

    def phase_peaks(self) -> dict[str | None, TensorBytes]:
        return {phase: self.breakdown(self.tracker.phase_live[phase], phase) for phase in self.tracker.phase_peaks}

    def at_mark(self) -> TensorBytes | None:
        """The live set at the fullest `mark_live()` moment by category (None: nothing marked)."""
        live = self.tracker.mark_live
        return None if live is None else self.breakdown(live, None)


def track_step(fn: Callable[[], Any], state_tensors: Callable[[], StateTensors], by_phase: bool,
               timeline: bool = False) -> TrackedStep:
    """Run `fn` under a tracker, the model states registered first (`timeline`: log every allocation and free)."""
    tracker = StorageTracker(by_phase, timeline)
    states = state_tensors()
    before, host = categorize(states), host_keys(states)
    for tensors in states.values():
        for t in tensors:
            tracker.track(t)
    del states
    tracker.step_start = len(tracker.events or ())
    with tracker:
        result = fn()
    tracker.finish()
    states = state_tensors()
    after = categorize(states)
    host |= host_keys(states)
    return TrackedStep(result, tracker, before, after, host)
