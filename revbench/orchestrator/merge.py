"""One record from the ranks of a multi-rank run: each rank wrote its own outcome; the parent merges them.

- `losses`: the mean of the ranks' losses, step by step. Each rank's loss is the mean over its equal share of
  the global batch, so their mean is the loss of the global batch, as one process would compute it.
- `metrics`: step times are the slowest rank's, step by step (ranks move in lockstep through their collectives),
  so throughput counts the samples of all ranks per step. `memory` is the rank with the highest peak tensor
  bytes; `ranks` holds every rank's figures (with its node and host), and their per-rank maximum and sum, field
  by field.
- a rank that failed or left nothing: the run takes the most telling failure (an OOM or a divergence before an
  error that is only the echo of a peer's death), and the error names every rank and why, with the exit of each
  rank that left no outcome as torchrun reported it.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

from revbench.measure.timing import step_stats

# The first of these among the ranks is the run's status.
STATUS_ORDER = ("oom", "diverged", "timeout", "error")
# torchrun's failure summary: "rank      : 1 (local_rank: 1)" then "exitcode  : -9 (pid: 1234)".
_TORCHRUN_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's OOM killer sends SIGKILL when host memory runs out)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def torchrun_exits(log_text: str) -> dict[int, int]:
    """Each failed rank's exit code, from the summary torchrun prints when a rank fails."""
    return {int(rank): int(code) for rank, code in _TORCHRUN_FAILURE.findall(log_text)}


def combine(values: list[Any], op: Callable[[list[Any]], Any]) -> Any:
    """`op` over the ranks' values, leaf by leaf through nested dicts; numbers only (None where none is one)."""
    if all(isinstance(v, dict) for v in values):
        keys = [k for k in values[0] if all(k in v for v in values)]
        combined = {k: combine([v[k] for v in values], op) for k in keys}
        return {k: v for k, v in combined.items() if v is not None and v != {}}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return op(values)
    return None


def merge_metrics(metrics: list[dict[str, Any]], samples_per_step: int, tokens_per_step: int) -> dict[str, Any]:
    slowest = [max(step) for step in zip(*(m["step_seconds"] for m in metrics), strict=True)]
    memories = [m["memory"] for m in metrics]
    peak_rank = max(range(len(metrics)), key=lambda r: memories[r]["tensor_bytes"]["total"])
    return {
        **step_stats(slowest, samples_per_step, tokens_per_step),
        "step_seconds": slowest,
        "memory": memories[peak_rank],
        "ranks": {
            "count": len(metrics),
            "peak_rank": peak_rank,
            "max": combine(memories, max),
            "sum": combine(memories, sum),
            "per_rank": [{"memory": m["memory"], "step_time_s": m["step_time_s"], "step_seconds": m["step_seconds"]}
                         for m in metrics],
        },
    }


def failure(outcomes: list[dict[str, Any] | None], exits: dict[int, int], nodes: int = 1) -> tuple[str, str]:
    """The run's status and an error naming every rank that failed or left no outcome, and why (`exits` are
    this node's: a rank on another node that left nothing is named as such)."""
    failed = {rank: o for rank, o in enumerate(outcomes) if o is not None and o["status"] != "ok"}
    missing = [rank for rank, o in enumerate(outcomes) if o is None]
    statuses = [o["status"] for o in failed.values()] or ["error"]
    status = min(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER))
    parts = [f"rank {rank} ({o['status']}): {o['error']}" for rank, o in failed.items()]
    # torchrun stops the other ranks with SIGTERM once one fails: the rank that died on its own comes first.
    stopped = -signal.SIGTERM.value
    for rank in sorted(missing, key=lambda r: exits.get(r) == stopped):
        if exits.get(rank) == stopped:
            why = "was stopped by torchrun (SIGTERM) when another rank failed"
        elif rank in exits:
            why = describe_exit(exits[rank])
        elif nodes > 1:
            why = ("ran on another node and reported nothing to this one (that node's record says why), or was "
                   "stopped by torchrun when another rank failed, or never started")
        else:
            why = "was stopped by torchrun when another rank failed, or never started"
        parts.append(f"rank {rank} left no result: it {why}")
    return status, "; ".join(parts)


def merge_outcomes(outcomes: list[dict[str, Any] | None], exits: dict[int, int], samples_per_step: int,
                   tokens_per_step: int, nodes: int = 1) -> dict[str, Any] | None:
    """The run's outcome from its ranks' (None for a rank that wrote none); None when no rank wrote one."""
    present = [o for o in outcomes if o is not None]
    if not present:
        return None
    lead = present[0]
    steps = min(len(o["losses"]) for o in present)
    losses = [sum(o["losses"][i] for o in present) / len(present) for i in range(steps)]
    merged = {"status": "ok", "error": None, "env": lead["env"], "losses": losses,
              "method_stats": {**lead["method_stats"], "ranks": len(outcomes)}, "metrics": {}}
    if len(present) == len(outcomes) and all(o["status"] == "ok" for o in present):
        merged["metrics"] = merge_metrics([o["metrics"] for o in present], samples_per_step, tokens_per_step)
        for entry, outcome in zip(merged["metrics"]["ranks"]["per_rank"], present, strict=True):
            entry.update(node=outcome.get("node", 0), host=outcome.get("host"))  # outcomes from before nodes: one
    else:
        merged["status"], merged["error"] = failure(outcomes, exits, nodes)
    return merged
