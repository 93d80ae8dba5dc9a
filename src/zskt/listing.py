"""`zskt list`: the registered models (with parameter counts) and data sets (with whether their files are
here)."""

from __future__ import annotations

import argparse
import shlex

from zskt.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default=None, help="data root to look in (default: $ZSKT_DATA or ~/.cache/zskt/data)"
    )


def print_models() -> None:
    """The models part: registered networks with parameter counts, the generator, the other spec forms."""
    from zskt.models import MODELS, Generator, build_model, count_parameters

    print("models (parameters at 10 classes, 3 channels)")
    print(f"  {'name':<10} {'family':<7} {'parameters':>12}  about")
    for name, entry in MODELS.items():
        print(f"  {name:<10} {entry.family:<7} {count_parameters(build_model(name)):>12,}  {entry.about}")
    generator = count_parameters(Generator())
    print(f"  {'generator':<10} {'':<7} {generator:>12,}  the zero-shot generator (32x32)")
    print("  also: wrn-DEPTH-WIDTH (any Wide ResNet, DEPTH = 6n+4); a network file; module:callable or")
    print("        path/to/file.py:callable (your own factory); timm:NAME (pip install 'zskt[timm]');")
    print("        see docs/own_models_and_data.md")


def main(args: argparse.Namespace) -> int:
    from zskt.data import DATASETS, data_root, dataset_files_present

    print_models()
    root = data_root(args.data_dir)
    print(f"\ndata sets (root {root})")
    print(f"  {'name':<14} {'classes':>7} {'size':>7} {'train':>7} {'test':>7}  files")
    where = f" --data-dir {shlex.quote(args.data_dir)}" if args.data_dir else ""
    for name, info in DATASETS.items():
        present = "embedded" if not info.downloadable else "present"
        if info.downloadable and not dataset_files_present(name, args.data_dir):
            present = f"missing (zskt download {name}{where})"
        size = f"{info.in_channels}x{info.image_size}"
        print(f"  {name:<14} {info.num_classes:>7} {size:>7} {info.n_train:>7} {info.n_test:>7}  {present}")
    print("  npz:PATH       your arrays: x uint8 (N, H, W) or (N, H, W, C), y int 0..K-1; optional")
    print("                 x_test/y_test, or npz:TRAIN.npz,TEST.npz; else a fixed 20 % test split")
    print("  folder:PATH    your images: PATH/CLASS/*.png (or PATH/train/CLASS and PATH/test/CLASS); square,")
    print("                 one size. Both: any number of classes, mean/std from the training split")
    print("                 (docs/own_models_and_data.md)")
    return 0


COMMAND = Command(
    "list", "list models (parameter counts) and data sets (files present?)", add_arguments, main
)
