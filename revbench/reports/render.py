"""The report: `report.md` in the report directory, built from sections, linking every table and plot.

A section is a function `(ReportContext) -> str | None` returning Markdown (None: nothing to say). The
sections run in the order of `revbench.reports.sections.SECTIONS`; to add one, append it there or call
`add_section(fn, after="paper_comparison")` before rendering. A section writes its tables and plots through
`ctx.table(...)` and `ctx.figure(...)`, which save the files and return the Markdown that links them.
"""

from __future__ import annotations

import json
from pathlib import Path

from revbench.records import RESULTS_FILE
from revbench.reports import sections as report_sections
from revbench.reports.context import ReportContext, Section
from revbench.reports.frame import load_records, runs_frame, summarize
from revbench.reports.plots import variant_colors

INDEX = "report.md"
MANIFEST = ".revbench-report.json"  # the files the last report wrote, so a re-render removes its stale ones


def add_section(section: Section, after: str | None = None) -> None:
    """Insert a section after the one named `after` (a function name), or at the end."""
    order = report_sections.SECTIONS  # read at call time: the list may have been replaced
    names = [s.__name__ for s in order]
    if after is not None and after not in names:
        raise ValueError(f"no report section {after!r}; the sections are {', '.join(names)}")
    order.insert(names.index(after) + 1 if after else len(order), section)


def default_report_dir(name: str) -> Path:
    return Path("reports") / name


def render_report(results_dir: str | Path, out_dir: str | Path | None = None,
                  sections: list[Section] | None = None) -> Path:
    """Write the report of the records in `results_dir` to `out_dir` (default reports/<results dir name>/);
    returns the path of report.md."""
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
    order = sections if sections is not None else report_sections.SECTIONS
    parts = [text for section in order if (text := section(ctx))]
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
