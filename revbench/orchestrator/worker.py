"""The per-run process: `python -m revbench.orchestrator.worker --spec S --result R --progress P`.

It reads one run spec (JSON: method and config), trains and measures through `revbench.harness.run_method`,
and writes its outcome (status, error, losses, metrics, method stats, env stamp) to R as JSON. Progress goes
to P as one JSON line per step. Under torchrun every rank runs this, on its slice of the global batch, and
writes its own outcome (R with `.rankN` before the suffix); each node's first rank writes the progress. Over
several nodes, which share no folder, the ranks also trade outcomes through torchrun's rendezvous store, so every
node's parent finds every rank's. The parent owns the records: it turns the outcomes, or the lack of them (a crash,
a kill, a timeout), into a record.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from revbench.orchestrator.outcomes import rank_result, write_json

MAX_ERROR_CHARS = 4000
PEER_WAIT_AFTER_FAILURE_S = 15.0


class ProgressFile:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def __call__(self, phase: str, step: int, total: int) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"phase": phase, "step": step, "total": total, "time": time.time()}) + "\n")


def watch_parent(parent_pid: int) -> None:
    """Exit when the sweep that started this run is gone (killed), rather than run on as an orphan."""
    import psutil

    def watch() -> None:
        while psutil.pid_exists(parent_pid):
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def classify(exc: BaseException) -> str:
    """The record status of an exception. A CUDA OOM that a library re-raised as a RuntimeError is still OOM."""
    import torch

    from revbench.harness import DivergedError

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return "oom"
    if isinstance(exc, DivergedError):
        return "diverged"
    return "error"


def cap_device_memory(device: str, budget_bytes: int) -> None:
    """On CUDA the budget is the allocator's limit too, so a run over it hits a real CUDA OOM."""
    import torch

    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), torch.device(device))


def run(spec: dict[str, Any], progress: ProgressFile) -> dict[str, Any]:
    from revbench.env import environment_stamp
    from revbench.harness import RunResult, run_method
    from revbench.orchestrator.plan import train_spec
    from revbench.ranks import local_rank, world_size

    config = spec["config"]
    train = train_spec(config)
    if world_size() > 1 and train.device.startswith("cuda"):  # launched by torchrun: one GPU per rank
        train.device = f"cuda:{local_rank()}"
    result = RunResult()
    outcome: dict[str, Any] = {"status": "ok", "error": None, "env": environment_stamp()}
    try:
        if config["memory_budget_bytes"] is not None:
            cap_device_memory(train.device, config["memory_budget_bytes"])
        run_method(spec["method"], train, steps=config["steps"], warmup=config["warmup"],
                   budget_bytes=config["memory_budget_bytes"], progress=progress, result=result)
    except Exception as exc:
        traceback.print_exc()  # the whole traceback goes to the run's log
        outcome["status"] = classify(exc)
        outcome["error"] = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    return {**outcome, "losses": result.losses, "metrics": result.metrics, "method_stats": result.method_stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m revbench.orchestrator.worker", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="run spec JSON: {method, config}")
    parser.add_argument("--result", type=Path, required=True, help="where to write the outcome JSON")
    parser.add_argument("--progress", type=Path, required=True, help="where to append progress lines")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid)
    rank, ranks = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank, local_ranks = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    where = {"node": int(os.environ.get("GROUP_RANK", "0")), "host": socket.gethostname()}
    result = rank_result(args.result, rank, ranks)
    progress = ProgressFile(args.progress, enabled=local_rank == 0)  # each node's first rank reports progress
    progress("prepare", 0, 0)
    spec = json.loads(args.spec.read_text())
    watch = None
    # Over several nodes through torchrun, whose agent's store is up before any rank starts: watch the other ranks.
    if ranks > local_ranks and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from revbench.orchestrator.peers import PeerWatch, trade_outcomes

        watch = PeerWatch(args.result, rank, ranks, where)
        watch.start()
    outcome = {**run(spec, progress), **where}
    write_json(result, outcome)
    if watch is not None:
        # A rank that failed waits briefly: its peers may be stuck in a collective that will never finish.
        wait_s = spec["config"]["timeout_s"] if outcome["status"] == "ok" else PEER_WAIT_AFTER_FAILURE_S
        trade_outcomes(args.result, outcome, rank, ranks, collect=local_rank == 0, wait_s=wait_s, watch=watch)
    # A rank that failed exits non-zero, so that torchrun stops the others rather than leave them waiting in a
    # collective for a rank that will never come.
    return 1 if ranks > 1 and outcome["status"] != "ok" else 0


if __name__ == "__main__":
    sys.exit(main())
