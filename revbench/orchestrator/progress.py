"""The sweep's progress display (rich): runs done of runs to do, the current run's step, both with an ETA."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from revbench.orchestrator.launch import OnProgress
from revbench.orchestrator.plan import PlannedRun
from revbench.progress import bar_columns
from revbench.records import RunRecord
from revbench.units import format_bytes

_STYLE = {"ok": "green", "oom": "yellow", "diverged": "magenta", "timeout": "red", "error": "red"}


def summary_line(record: RunRecord) -> str:
    """One line per finished run: status, time, and its headline figures or its error."""
    line = f"{record.duration_s or 0:.1f} s, "
    if record.status == "ok":
        memory = record.metrics["memory"]["tensor_bytes"]
        line += f"peak device {format_bytes(memory['device'])}"
        if memory["host"]:
            line += f" + host {format_bytes(memory['host'])}"
        line += f" in {memory['phase']}"
        if memory.get("host_activations"):
            line += f", activations on host {format_bytes(memory['host_activations'])} (own peak)"
        line += f", {record.metrics['tokens_per_s']:,.0f} tokens/s"
    else:
        error = (record.error or "").splitlines()[0] if record.error else ""
        line += escape(error[:160] + ("…" if len(error) > 160 else ""))
    return line


class SweepProgress:
    """Two bars: the sweep (runs) and the run in flight (steps, as its worker reports them)."""

    def __init__(self, title: str, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(*bar_columns(), console=self.console)
        self.sweep = self.progress.add_task(f"[bold]{title}[/] runs", total=0)
        self.run = self.progress.add_task("", total=None, visible=False)
        self.label = ""

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def add_runs(self, count: int) -> None:
        total = self.progress.tasks[self.sweep].total or 0
        self.progress.update(self.sweep, total=total + count)

    def note(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=True)

    def start_run(self, run: PlannedRun) -> OnProgress:
        self.label = escape(run.label)
        self.progress.reset(self.run, total=None, description=f"  {self.label} (starting)", visible=True)

        def on_progress(phase: str, step: int, total: int) -> None:
            if phase == "prepare":
                self.progress.update(self.run, description=f"  {self.label} (preparing)")
            else:
                self.progress.update(self.run, description=f"  {self.label} step", completed=step, total=total)

        return on_progress

    def finish_run(self, record: RunRecord) -> None:
        self.progress.update(self.run, visible=False)
        self.progress.advance(self.sweep)
        style = _STYLE[record.status]
        self.progress.console.print(f"[{style}]{record.status:<8}[/] {self.label}: {summary_line(record)}",
                                    soft_wrap=True, highlight=False)
