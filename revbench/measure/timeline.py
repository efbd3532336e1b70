"""One training step's live tensor bytes at every allocation and free, by category and residency: when in the step
the peak falls, which category grows into it, and what a technique takes away.

The storage tracker logs each storage's allocation and free in order (`track_step(..., timeline=True)`). Once the
step is over each storage's category is known, as it is for the peak: a storage that outlives the step is the model
state it is then, a temporary is `workspace` or `activations` by the phase that allocated it. A sweep over the log
then gives every event's bytes. Event 0 is the step's start (the model states only); `total` counts host-resident
states too (`host_*`), `device` is what the accelerator holds. The largest `total` is the tracker's peak, to the
byte, and `downsample` keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

import pandas as pd

from revbench.measure.categories import CATEGORIES, STATE_CATEGORIES, StateTensors
from revbench.measure.storage_tracker import TrackedStep, track_step

HOST_COLUMNS = tuple(f"host_{category}" for category in STATE_CATEGORIES)
# Activations an offload holds in host memory: apart from the categories, `total`, `device` and `host` (the states'),
# as in TensorBytes.
HOST_ACTIVATIONS = "host_activations"
BYTE_COLUMNS = (*CATEGORIES, *HOST_COLUMNS, HOST_ACTIVATIONS)
COLUMNS = ("event", "phase", *BYTE_COLUMNS, "device", "host", "total")
# What a run's record keeps: a couple of hundred points draw the step, and the record stays small (under 16 kB).
RECORD_POINTS = 150
PHASE_LETTERS = {"forward": "f", "backward": "b", "optimizer": "o", None: "-"}


Event = tuple[Hashable, int, "str | None"]  # (allocation, +bytes at its allocation or -bytes at its free, phase)


def sweep(events: Iterable[Event], where: Callable[[Hashable], tuple[str, bool]], start: int = 0,
          initial: dict[str, int] | None = None, initial_host: dict[str, int] | None = None) -> pd.DataFrame:
    """Every event's live bytes by category: `where(allocation)` is its (category, held in host memory), the category
    HOST_ACTIVATIONS for an offloaded activation. Rows from event `start` on; row 0 is the state before it (the model
    states, over `initial` and `initial_host`)."""
    totals = {**dict.fromkeys((*CATEGORIES, HOST_ACTIVATIONS), 0), **(initial or {})}
    on_host = {**dict.fromkeys(STATE_CATEGORIES, 0), **(initial_host or {})}
    placed: dict[Hashable, tuple[str, bool]] = {}

    def row(event: int, phase: str | None) -> tuple:
        return (event, phase, *(totals[c] for c in CATEGORIES), *on_host.values(), totals[HOST_ACTIVATIONS])

    rows = [] if start else [row(0, None)]
    for index, (allocation, nbytes, phase) in enumerate(events):
        if allocation not in placed:
            placed[allocation] = where(allocation)
        category, host = placed[allocation]
        totals[category] += nbytes
        if host:
            on_host[category] += nbytes
        event = index + 1 - start
        if event >= 0:  # event 0: the model states, whatever phase registered them
            rows.append(row(event, phase if event else None))
    frame = pd.DataFrame(rows, columns=COLUMNS[:-3])
    return _with_totals(frame)


def _with_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's `host`, `total` and `device` from its categories, its columns in COLUMNS' order."""
    frame["host"] = frame[list(HOST_COLUMNS)].sum(axis=1)
    frame["total"] = frame[list(CATEGORIES)].sum(axis=1)
    frame["device"] = frame["total"] - frame["host"]
    return frame[list(COLUMNS)]


def timeline_frame(step: TrackedStep) -> pd.DataFrame:
    """Every event of a step tracked with `timeline=True`, from its start (event 0: the model states) to its end."""
    tracker = step.tracker
    if tracker.events is None:
        raise ValueError("the step was tracked without timeline=True")

    def where(serial: Hashable) -> tuple[str, bool]:
        if serial in tracker.host_serials:
            return HOST_ACTIVATIONS, False
        key = tracker.keys[serial]
        survives = tracker.survives(key, serial)
        return tracker.category(key, serial, survives, step.before, step.after), survives and key in step.host

    return sweep(tracker.events, where, tracker.step_start)


def measure_timeline_tracked(fn: Callable[[], Any], state_tensors: Callable[[], StateTensors]
                             ) -> tuple[Any, TrackedStep, pd.DataFrame]:
    """Run `fn` under a tracker that logs every event: its result, the tracked step (its phase peaks) and the
    timeline."""
    step = track_step(fn, state_tensors, by_phase=True, timeline=True)
    return step.result, step, timeline_frame(step)


def downsample(frame: pd.DataFrame, points: int = RECORD_POINTS) -> pd.DataFrame:
    """At most `points` rows: in each of equal runs of events the one holding the most (so the peak stays, to the
    byte), with the first and the last event."""
    if len(frame) <= points:
        return frame.reset_index(drop=True)
    buckets = pd.Series(range(len(frame)), index=frame.index) * (points - 2) // len(frame)
    keep = frame.groupby(buckets.to_numpy())["total"].idxmax()
    return frame.loc[sorted({frame.index[0], *keep, frame.index[-1]})].reset_index(drop=True)


def compact(frame: pd.DataFrame, points: int = RECORD_POINTS) -> dict[str, Any]:
    """A timeline as a record keeps it: downsampled, the columns that are ever nonzero, one letter a phase."""
    small = downsample(frame, points)
    columns = ["event", *(c for c in BYTE_COLUMNS if small[c].any())]
    phases = small["phase"].where(small["phase"].notna(), None)
    return {"events": int(frame["event"].iloc[-1]), "columns": columns,
            "phases": "".join(PHASE_LETTERS.get(p, "-") for p in phases),
            "rows": small[columns].astype(int).to_numpy().tolist()}


def expand(data: dict[str, Any]) -> pd.DataFrame:
    """The frame of a record's `compact` timeline (the columns it left out are zero)."""
    phases = {letter: phase for phase, letter in PHASE_LETTERS.items()}
    frame = pd.DataFrame(data["rows"], columns=data["columns"])
    for column in BYTE_COLUMNS:
        if column not in frame:
            frame[column] = 0
    frame["phase"] = [phases[letter] for letter in data["phases"]]
    return _with_totals(frame)
