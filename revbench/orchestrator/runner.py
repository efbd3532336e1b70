"""The sweep: every run of a suite, one process each, one record each, resumable.

Records go to `<out>/results.jsonl` as each run ends. A run whose id already has a record there is not run
again (unless its status is listed in `retry`), so a sweep that was killed picks up where it stopped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console

from revbench.env import environment_stamp
from revbench.orchestrator.launch import execute
from revbench.orchestrator.lock import SweepLock, describe
from revbench.orchestrator.plan import PlannedRun, check_options, grid_points, grid_runs, plan_run, with_value
from revbench.orchestrator.progress import SweepProgress
from revbench.orchestrator.search import largest_fitting
from revbench.orchestrator.suite import Search, Suite, SuiteError
from revbench.records import RESULTS_FILE, RunRecord, append_record, read_records
from revbench.units import format_bytes


def latest_records(out_dir: Path) -> dict[str, RunRecord]:
    """The last record of each run id in a results directory (empty when there is none yet)."""
    if not (out_dir / RESULTS_FILE).is_file():
        return {}
    return {record.run_id: record for record in read_records(out_dir)}


class Sweep:
    def __init__(self, suite: Suite, out_dir: Path, retry: tuple[str, ...] = (), console: Console | None = None,
                 rendezvous: str | None = None):
        check_options(suite)
        check_rendezvous(suite, rendezvous)
        self.suite = suite
        self.rendezvous = rendezvous
        self.out_dir = Path(out_dir)
        self.retry = retry
        self.console = console or Console()
        # Planned up front, so a suite that cannot run here is refused before anything starts.
        self.runs = [] if suite.search else grid_runs(suite)
        self.points = grid_points(suite) if suite.search else []
        if self.points:
            plan_run(self.points[0], suite.methods[0])
        self.records: dict[str, RunRecord] = {}  # read under the lock, when the sweep starts
        self.env = environment_stamp()
        self.ran = 0  # runs started by this sweep; the others had a record already
        self.reused = Counter[str]()  # recorded runs not re-run although they did not end ok, by status

    def pending(self, run: PlannedRun) -> bool:
        previous = self.records.get(run.run_id)
        return previous is None or previous.status in self.retry

    def obtain(self, run: PlannedRun, progress: SweepProgress) -> RunRecord:
        """The run's record: the one already there, or a new one from running it."""
        if not self.pending(run):
            record = self.records[run.run_id]
            if record.status != "ok" and not (record.status == "oom" and run.config["search_key"]):
                self.reused[record.status] += 1  # a budget probe's OOM is its answer, not a failure
            return record
        record = execute(run, self.out_dir, self.env, progress.start_run(run), self.rendezvous)
        append_record(self.out_dir, record)
        self.records[run.run_id] = record
        self.ran += 1
        progress.finish_run(record)
        return record

    def run(self) -> list[RunRecord]:
        """Run the sweep under the directory's lock (LockedError when another sweep holds it)."""
        with SweepLock(self.out_dir) as lock:
            if lock.stale:
                self.console.print(f"took over the lock of a sweep that ended without releasing it "
                                   f"({describe(lock.stale)})", soft_wrap=True, highlight=False)
            if lock.cleaned:
                self.console.print(f"removed {lock.cleaned} scratch folder(s) that a killed sweep left in "
                                   f"{lock.tmp_dir}", soft_wrap=True, highlight=False)
            self.records = latest_records(self.out_dir)
            return self._run()

    def _run(self) -> list[RunRecord]:
        runs, points = self.runs, self.points
        out: list[RunRecord] = []
        with SweepProgress(self.suite.name, self.console) as progress:
            todo = sum(map(self.pending, runs))
            progress.add_runs(todo)
            if len(runs) > todo:
                kept = Counter(self.records[r.run_id].status for r in runs if not self.pending(r))
                unfinished = {s: n for s, n in kept.items() if s != "ok"}
                note = ""
                if unfinished:
                    note = (f", of which {', '.join(f'{n} {s}' for s, n in unfinished.items())} are not re-run "
                            f"(re-run them with --retry {','.join(unfinished)})")
                progress.note(f"resuming: {len(runs) - todo} of {len(runs)} runs already have a record in "
                              f"{self.out_dir / RESULTS_FILE}{note}")
            out.extend(self.obtain(run, progress) for run in runs)
            for point in points:
                for search in self.suite.search:
                    for method in self.suite.methods:
                        out.extend(self.search(point, search, method, progress))
        return out

    def search(self, point: Suite, search: Search, method: str, progress: SweepProgress) -> list[RunRecord]:
        probes: list[RunRecord] = []

        def fits(value: int) -> bool | None:
            run = plan_run(with_value(point, search.key, value), method, search_key=search.key)
            if self.pending(run):
                progress.add_runs(1)
            record = self.obtain(run, progress)
            probes.append(record)
            return {"ok": True, "oom": False}.get(record.status)

        found = largest_fitting(search, fits)
        budget = format_bytes(point.memory_budget) if point.memory_budget else "no memory budget"
        text = f"{method}: largest {search.key} that fits under {budget}: {found.largest_fit}"
        if found.first_oom is not None:
            text += f" (first OOM at {found.first_oom})"
        if found.stopped is not None:
            text += f"; stopped at {found.stopped}: that run ended as {probes[-1].status}"
        progress.note(text)
        return probes


def check_rendezvous(suite: Suite, rendezvous: str | None) -> None:
    """A suite over several nodes needs the endpoint where their torchruns meet; one node needs none."""
    if suite.nodes > 1 and rendezvous is None:
        raise SuiteError(f"suite {suite.name!r} spans nodes={suite.nodes}: start the same command on every node with "
                         f"--rdzv-endpoint HOST:PORT (HOST: the first node's address, PORT: a free port there, e.g. "
                         f"29400)")
    if suite.nodes == 1 and rendezvous is not None:
        raise SuiteError(f"--rdzv-endpoint joins runs over several nodes, but suite {suite.name!r} has nodes=1 "
                         f"(set --set nodes=N, or leave --rdzv-endpoint out)")


def run_suite(suite: Suite, out_dir: Path, retry: tuple[str, ...] = (), console: Console | None = None,
              rendezvous: str | None = None) -> list[RunRecord]:
    """Run (or resume) a suite into `out_dir`; returns the record of every run in the suite. Over several
    nodes, every node runs the same suite into its own `out_dir`, and every node's records hold every rank."""
    return Sweep(suite, out_dir, retry, console, rendezvous).run()
