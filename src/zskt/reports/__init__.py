"""Runs into tables and plots: `collect` reads an experiment folder's result.json files, `aggregate` makes
mean ± population std with n per cell, `report` writes report.md (beside the published numbers of
`published.py`) and PNG plots. Nothing here trains or re-runs anything."""

from zskt.reports.collect import Results, Row, Stat, aggregate, collect
from zskt.reports.report import report

__all__ = ["Results", "Row", "Stat", "aggregate", "collect", "report"]
