"""`zskt download`: fetch a data set's canonical files into the data root, checking their md5."""

from __future__ import annotations

import argparse

from zskt.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zskt.data.registry import DATASETS

    fetched = ", ".join(name for name, info in DATASETS.items() if info.downloadable)
    parser.add_argument(
        "datasets",
        nargs="+",
        metavar="DATASET",
        help=f"{fetched} (digits is embedded in scikit-learn and needs nothing)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="data root (default: $ZSKT_DATA or ~/.cache/zskt/data)"
    )


def main(args: argparse.Namespace) -> int:
    from zskt.data import download_dataset, get_info

    for name in args.datasets:
        info = get_info(name)
        if not info.downloadable:
            what = "embedded in scikit-learn" if info.source == "built-in" else "your own files"
            print(f"{info.title}: {what}, nothing to download")
            continue
        root = download_dataset(info.name, args.data_dir)
        print(f"{info.title}: files present in {root}")
    return 0


COMMAND = Command(
    "download", "download a data set's canonical files (md5-checked) into the data root", add_arguments, main
)
