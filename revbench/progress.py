"""A bar over a known number of items finished in any order (the methods of an estimate, the compositions of the
paper-scale report): done of total, elapsed time and ETA, with one line per finished item printed above it.

On stderr, so that a command's table or JSON on stdout stays clean; where stderr is not a terminal, rich draws no bar
and the lines alone are written.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def bar_columns() -> tuple[ProgressColumn, ...]:
    """revbench's bars: description, bar, done of total, elapsed time, ETA (the sweep's too)."""
    return (TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn())


class ItemsProgress:
    def __init__(self, title: str, total: int, console: Console | None = None) -> None:
        self.bar = Progress(*bar_columns(), console=console or Console(stderr=True), transient=True)
        self.task = self.bar.add_task(title, total=total)

    def __enter__(self) -> ItemsProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def note(self, line: str) -> None:
        self.bar.console.print(line, soft_wrap=True, highlight=False, markup=False)

    def done(self, line: str) -> None:
        """One item finished: its line, and the bar moves."""
        self.note(line)
        self.bar.advance(self.task)
