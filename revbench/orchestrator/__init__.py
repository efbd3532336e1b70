"""The orchestrator: suites (YAML grids of runs), one process per run, resumable sweeps with progress."""

from revbench.orchestrator.plan import PlannedRun, grid_points, grid_runs, plan_run, train_spec
from revbench.orchestrator.runner import latest_records, run_suite
from revbench.orchestrator.suite import DEFAULT_SUITE, Search, Suite, SuiteError, load_suite, shipped_suites

__all__ = [
    "DEFAULT_SUITE", "PlannedRun", "Search", "Suite", "SuiteError", "grid_points", "grid_runs", "latest_records",
    "load_suite", "plan_run", "run_suite", "shipped_suites", "train_spec",
]
