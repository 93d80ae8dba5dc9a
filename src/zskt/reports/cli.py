"""`zskt report DIR`: rebuild an experiment folder's report.md and plots from its result.json files."""

from __future__ import annotations

import argparse

from zskt.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", metavar="DIR", help="experiment folder (the --out of zskt reproduce or zskt demo)"
    )
    parser.add_argument("--print", dest="show", action="store_true", help="also print report.md")


def main(args: argparse.Namespace) -> int:
    from zskt.reports import report

    path = report(args.dir)
    if args.show:
        print(path.read_text(), end="")
    print(f"report: {path}")
    return 0


COMMAND = Command(
    "report",
    "rebuild an experiment folder's report (tables beside the paper's, plots)",
    add_arguments,
    main,
    description="Write DIR/report.md and its PNG plots from the result.json files under DIR "
    "(finished runs only; planned runs that have not finished are shown as missing or started). "
    "Safe to run at any time, also while a grid is running.",
)
