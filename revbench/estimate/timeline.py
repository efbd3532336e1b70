"""An estimate's memory timeline: the live bytes at every event of one step at the full depth and size, on fake
tensors (measure/timeline.py). Always traced, never extrapolated: a deep stack's events are its own; the largest
`total` equals the estimate's peak (extrapolated or not) to the byte."""

from __future__ import annotations

import pandas as pd

from revbench.estimate.session import open_session
from revbench.spec import TrainSpec


class TimelineUnavailable(Exception):
    """The method's estimate has no event sequence to draw."""


def step_timeline(name: str, spec: TrainSpec, target: str) -> pd.DataFrame:
    """`name`'s timeline at `spec` (its model's full depth, its batch and sequence length) on `target`'s code path."""
    session = open_session(name, spec, target, extrapolate=False)
    if not hasattr(session, "timeline"):
        raise TimelineUnavailable("DeepSpeed ZeRO, offloaded or not, is estimated from its buffer layout plus an "
                                  "activation peak, not stepped event by event")
    return session.timeline(spec.workload.batch, spec.workload.seq)


def timeline_or_reason(name: str, spec: TrainSpec, target: str) -> tuple[str, pd.DataFrame | None, str | None]:
    """(name, timeline, None), or (name, None, why there is none): for a pool of processes."""
    try:
        return name, step_timeline(name, spec, target), None
    except TimelineUnavailable as exc:
        return name, None, str(exc)
