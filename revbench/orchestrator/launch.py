"""Run one planned run in its own process (a fresh allocator and CUDA context) and turn what happened into a
record: the worker's outcome, or, when it left none, the crash, the kill or the timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from revbench.orchestrator.lock import TMP_DIR
from revbench.orchestrator.merge import describe_exit, failure, merge_outcomes, torchrun_exits
from revbench.orchestrator.outcomes import rank_result
from revbench.orchestrator.plan import PlannedRun, nodes, ranks_per_node, world_size
from revbench.records import RunRecord

OnProgress = Callable[[str, int, int], None]  # (phase, step, total)
LOG_DIR = "logs"
POLL_S = 0.1
KILL_GRACE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(run: PlannedRun, spec: Path, result: Path, progress: Path,
                   rendezvous: str | None = None) -> list[str]:
    """The worker's command line; several ranks (GPUs, or CPU processes) go through torchrun, which starts one
    worker per rank on this node and stops them all when one fails. Over several nodes, every node's torchrun
    meets the others at `rendezvous` (HOST:PORT) under the run's id, so each run of a sweep is its own job."""
    args = ["-m", "revbench.orchestrator.worker", "--spec", str(spec), "--result", str(result),
            "--progress", str(progress), "--parent-pid", str(os.getpid())]
    if world_size(run.config) == 1:
        return [sys.executable, *args]
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks_per_node(run.config)}"]
    if nodes(run.config) == 1:
        return [*launch, "--standalone", *args]
    if rendezvous is None:
        raise ValueError(f"run {run.run_id} spans {nodes(run.config)} nodes and needs a rendezvous endpoint")
    return [*launch, f"--nnodes={nodes(run.config)}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous}",
            f"--rdzv-id={run.run_id}", "--max-restarts=0", *args]


def worker_env(run: PlannedRun) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    on_cpu = run.config["device"].startswith("cpu")
    env["DS_ACCELERATOR"] = "cpu" if on_cpu else "cuda"
    if world_size(run.config) == 1:
        # A single-process DeepSpeed run needs a rendezvous of one, or it goes looking for MPI.
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    else:  # the node's ranks share its cores (torchrun would set 1, with a warning)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks_per_node(run.config))))
    return env


def read_outcome(run: PlannedRun, result: Path, log_path: Path) -> dict[str, Any] | None:
    """The worker's outcome, or the merge of every rank's (None when none was written)."""
    ranks = world_size(run.config)
    if ranks == 1:
        return json.loads(result.read_text()) if result.is_file() else None
    files = [rank_result(result, rank, ranks) for rank in range(ranks)]
    outcomes = [json.loads(f.read_text()) if f.is_file() else None for f in files]
    workload = run.config["workload"]
    return merge_outcomes(outcomes, rank_exits(log_path), workload["batch"], workload["batch"] * workload["seq"],
                          nodes(run.config))


def rank_exits(log_path: Path) -> dict[int, int]:
    try:
        return torchrun_exits(log_path.read_text(errors="replace"))
    except OSError:
        return {}


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """The worker and everything it started (torchrun ranks, DeepSpeed helpers): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class ProgressReader:
    """Reads the worker's progress lines as they come."""

    def __init__(self, path: Path, on_progress: OnProgress | None) -> None:
        self.path = path
        self.on_progress = on_progress
        self.offset = 0
        self.last: dict[str, Any] = {}

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            self.last = json.loads(line)
            if self.on_progress:
                self.on_progress(self.last["phase"], self.last["step"], self.last["total"])

    def where(self) -> str:
        if not self.last:
            return "before it reported anything"
        if self.last["phase"] == "prepare":
            return "while preparing (building the model and optimizer)"
        return f"at step {self.last['step']}/{self.last['total']}"


def execute(run: PlannedRun, out_dir: Path, env: dict[str, Any], on_progress: OnProgress | None = None,
            rendezvous: str | None = None) -> RunRecord:
    """Run `run` in a child process with its timeout; always returns a record. `env` is the parent's stamp,
    used when the worker died before writing its own; `rendezvous` (HOST:PORT) joins a run over several nodes."""
    log_path = out_dir / LOG_DIR / f"{run.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = run.config["timeout_s"]
    started, clock = _stamp(), time.monotonic()
    scratch = out_dir / TMP_DIR  # under the sweep's lock; a killed sweep's leftovers go when the next one starts
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{run.run_id}-", dir=scratch) as tmp:
        spec, result, progress = Path(tmp, "spec.json"), Path(tmp, "result.json"), Path(tmp, "progress.jsonl")
        spec.write_text(json.dumps({"method": run.method, "config": run.config}))
        reader = ProgressReader(progress, on_progress)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(worker_command(run, spec, result, progress, rendezvous), stdout=log,
                                    stderr=subprocess.STDOUT, env=worker_env(run), start_new_session=True)
            timed_out = False
            try:
                while proc.poll() is None:
                    reader.poll()
                    if time.monotonic() - clock > timeout_s:
                        timed_out = True
                        break
                    time.sleep(POLL_S)
            finally:  # also on Ctrl-C or an error here: never leave a worker behind
                if proc.poll() is None:
                    _kill_group(proc)
        reader.poll()
        outcome = read_outcome(run, result, log_path)
    record = RunRecord(run_id=run.run_id, suite=run.suite, method=run.method, status="ok", config=run.config,
                       env=env, started=started, finished=_stamp(),
                       duration_s=round(time.monotonic() - clock, 3))
    if outcome is not None:
        record.status, record.error, record.env = outcome["status"], outcome["error"], outcome["env"]
        record.losses, record.metrics, record.method_stats = (outcome["losses"], outcome["metrics"],
                                                              outcome["method_stats"])
        if timed_out and record.status != "ok":  # some ranks reported, the others were still running
            record.status = "timeout"
            record.error = f"not every rank reported within the {timeout_s:g} s timeout; the run was killed: " \
                           f"{record.error}"
    elif timed_out:
        record.status = "timeout"
        record.error = f"no result after the {timeout_s:g} s timeout, {reader.where()}; the run was killed"
    else:
        tail = _log_tail(log_path)
        ranks = world_size(run.config)
        record.status = "error"
        record.error = (f"{'torchrun' if ranks > 1 else 'the worker'} {describe_exit(proc.returncode)} "
                        f"{reader.where()}, without a result")
        if ranks > 1:
            record.error += f"; {failure([None] * ranks, rank_exits(log_path), nodes(run.config))[1]}"
        record.error += f"; its log ends: {tail}" if tail else ""
    return record
