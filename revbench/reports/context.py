"""What a report section is handed: the records, their frames, and where its tables and figures go."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from revbench.records import RunRecord
from revbench.reports.tables import markdown, readable

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
