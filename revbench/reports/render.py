"""The report: `report.md` in the report directory, built from sections, linking every table and plot.

A section is a function `(ReportContext) -> str | None` returning Markdown (None: nothing to say). The
sections run in the order of `revbench.reports.sections.SECTIONS`; to add one, append it there or call
`add_section(fn, after="paper_comparison")` before rendering. A section writes its tables and plots through
`ctx.table(...)` and `ctx.figure(...)`, which save the files and return the Markdown that links them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from revbench.records import RESULTS_FILE, RunRecord
from revbench.reports.frame import load_records, runs_frame, summarize
from revbench.reports.plots import variant_colors
from revbench.reports.tables import markdown, readable

INDEX = "report.md"
MANIFEST = ".revbench-report.json"  # the files the last report wrote, so a re-render removes its stale ones
DPI = 120


@dataclass
class ReportContext:
    results_dir: Path
    out_dir: Path
    records: list[RunRecord]
    frame: pd.DataFrame  # one row per run (see revbench.reports.frame)
    summary: pd.DataFrame  # one row per point and variant, repeats merged
    colors: dict[str, str]
    files: list[Path] = field(default_factory=list)  # every file the sections wrote

    def link(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out_dir)).as_posix()

    def table(self, data: pd.DataFrame, name: str, formatted: pd.DataFrame | None = None) -> str:
        """Write `data` to `<name>.csv` (raw numbers) and the readable version to `<name>.md`; return the
        Markdown table with links to both."""
        csv, md = self.out_dir / f"{name}.csv", self.out_dir / f"{name}.md"
        data.to_csv(csv, index=False)
        text = markdown(formatted if formatted is not None else readable(data))
        md.write_text(text + "\n")
        self.files += [md, csv]
        return f"{text}\n\n([{md.name}]({self.link(md)}), [{csv.name}]({self.link(csv)}))\n"

    def figure(self, fig: Figure, name: str, alt: str) -> str:
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        self.files.append(path)
        return f"![{alt}]({self.link(path)})\n"


Section = Callable[[ReportContext], "str | None"]


def add_section(section: Section, after: str | None = None) -> None:
    """Insert a section after the one named `after` (a function name), or at the end."""
    from revbench.reports.sections import SECTIONS

    names = [s.__name__ for s in SECTIONS]
    if after is not None and after not in names:
        raise ValueError(f"no report section {after!r}; the sections are {', '.join(names)}")
    SECTIONS.insert(names.index(after) + 1 if after else len(SECTIONS), section)


def default_report_dir(name: str) -> Path:
    return Path("reports") / name


def render_report(results_dir: str | Path, out_dir: str | Path | None = None,
                  sections: list[Section] | None = None) -> Path:
    """Write the report of the records in `results_dir` to `out_dir` (default reports/<results dir name>/);
    returns the path of report.md."""
    from revbench.reports.sections import SECTIONS

    results_dir = Path(results_dir)
    if results_dir.name == RESULTS_FILE:
        results_dir = results_dir.parent
    records = load_records(results_dir)
    out = Path(out_dir) if out_dir else default_report_dir(results_dir.resolve().name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report directory {str(out)!r} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    frame = runs_frame(records)
    summary = summarize(frame)
    ctx = ReportContext(results_dir=results_dir, out_dir=out, records=records, frame=frame, summary=summary,
                        colors=variant_colors(list(frame["variant"])))
    parts = [text for section in (sections if sections is not None else SECTIONS) if (text := section(ctx))]
    index = out / INDEX
    index.write_text("\n".join(parts))
    remove_stale(out, [index, *ctx.files])
    return index


def remove_stale(out: Path, written: list[Path]) -> list[Path]:
    """Delete what the previous report in `out` wrote and this one did not (a plot of a method no longer in
    the records); files revbench did not write are never touched. Returns the files removed."""
    manifest = out / MANIFEST
    try:
        before = json.loads(manifest.read_text())
    except (OSError, ValueError):
        before = []
    names = sorted({p.name for p in written})
    stale = [out / name for name in before if isinstance(name, str) and name not in names
             and Path(name).name == name and (out / name).is_file()]
    for path in stale:
        path.unlink()
    manifest.write_text(json.dumps(names, indent=1) + "\n")
    return stale
