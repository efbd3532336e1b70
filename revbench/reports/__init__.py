"""Reports derived from run records: tables (Markdown + CSV), PNG plots and the paper comparison.

`revbench.reports.render.render_report(results_dir, out_dir)` writes them all, indexed by `report.md`.
"""
