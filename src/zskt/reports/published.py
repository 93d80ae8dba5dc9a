"""The published numbers our reports stand beside: the paper's and the two reproductions' (SPEC §8), as
literal dicts. Accuracies in %, (mean, std) with the std None where a single run was reported; seeds 0, 1, 2
unless said. Every table names its source tag (SPEC "Sources used"):

PAPER     arXiv v3 text and tables          NB-ACC    the authors' notebook behind Figure 2
NB-MTE    the authors' MTE notebook         FERLES    the ReScience reproduction (3 seeds)
COMP6248  the Southampton reproduction (KD+AT and zero-shot from one seed; scratch models mean ± std)
"""

from __future__ import annotations

import statistics

from zskt.runids import BENCHMARK_PAIRS

SOURCES = {  # as the report's tables label them
    "PAPER": "paper",
    "NB-ACC": "paper (Fig. 2 data)",
    "NB-MTE": "authors' notebook",
    "FERLES": "Ferles et al.",
    "COMP6248": "COMP6248",
}
SOURCE_NOTES = {  # the report's footnote
    "PAPER": "Micaelli & Storkey, NeurIPS 2019 (arXiv:1905.09768v3), text and tables",
    "NB-ACC": "the authors' notebooks/accuracy_plots.ipynb, the numbers behind Figure 2 (3-seed means)",
    "NB-MTE": "the authors' notebooks/transition_curves_and_error.ipynb, printed MTE values",
    "FERLES": "Ferles et al., [Re] Zero-Shot Knowledge Transfer via Adversarial Belief Matching, "
    "ReScience 2020 (3 seeds; Figure 2 points: mean ± population std of their per-seed tables)",
    "COMP6248": "COMP6248 reproducibility report, University of Southampton (KD+AT and zero-shot: one seed)",
}


def mean_std(values: tuple[float, ...]) -> tuple[float, float]:
    """Mean and population std (ddof 0, as the paper's np.std) of published per-seed values."""
    return statistics.fmean(values), statistics.pstdev(values)


# ---------------------------------------------------------------------------------- Table 1 (CIFAR-10)
# (teacher, student) -> column -> (mean, std). Columns: teacher scratch, student scratch, KD+AT M = 200,
# zero-shot (M = 0).
TABLE1 = {
    "PAPER": {
        ("wrn-16-2", "wrn-16-1"): {
            "teacher": (93.97, 0.11),
            "student": (91.04, 0.04),
            "kd-at": (84.54, 0.21),
            "zero-shot": (82.44, 0.21),
        },
        ("wrn-40-1", "wrn-16-1"): {
            "teacher": (93.18, 0.08),
            "student": (91.04, 0.04),
            "kd-at": (81.71, 0.25),
            "zero-shot": (79.93, 1.11),
        },
        ("wrn-40-2", "wrn-16-1"): {
            "teacher": (94.73, 0.02),
            "student": (91.04, 0.04),
            "kd-at": (81.25, 0.67),
            "zero-shot": (83.69, 0.58),
        },
        ("wrn-40-1", "wrn-16-2"): {
            "teacher": (93.18, 0.08),
            "student": (93.97, 0.11),
            "kd-at": (85.74, 0.47),
            "zero-shot": (86.60, 0.56),
        },
        ("wrn-40-2", "wrn-16-2"): {
            "teacher": (94.73, 0.02),
            "student": (93.97, 0.11),
            "kd-at": (86.39, 0.33),
            "zero-shot": (89.71, 0.10),
        },
        ("wrn-40-2", "wrn-40-1"): {
            "teacher": (94.73, 0.02),
            "student": (93.18, 0.08),
            "kd-at": (87.35, 0.12),
            "zero-shot": (86.60, 1.79),
        },
    },
    "FERLES": {
        ("wrn-16-2", "wrn-16-1"): {
            "teacher": (94.21, 0.03),
            "student": (91.38, 0.33),
            "kd-at": (85.55, 0.25),
            "zero-shot": (81.25, 0.86),
        },
        ("wrn-40-1", "wrn-16-1"): {
            "teacher": (93.83, 0.22),
            "student": (91.38, 0.33),
            "kd-at": (83.64, 0.22),
            "zero-shot": (79.90, 1.82),
        },
        ("wrn-40-2", "wrn-16-1"): {
            "teacher": (95.16, 0.04),
            "student": (91.38, 0.33),
            "kd-at": (82.85, 0.95),
            "zero-shot": (83.63, 0.15),
        },
        ("wrn-40-1", "wrn-16-2"): {
            "teacher": (93.83, 0.22),
            "student": (94.21, 0.03),
            "kd-at": (87.25, 0.18),
            "zero-shot": (87.71, 0.71),
        },
        ("wrn-40-2", "wrn-16-2"): {
            "teacher": (95.16, 0.04),
            "student": (94.21, 0.03),
            "kd-at": (87.27, 0.69),
            "zero-shot": (89.31, 0.14),
        },
        ("wrn-40-2", "wrn-40-1"): {
            "teacher": (95.16, 0.04),
            "student": (93.83, 0.22),
            "kd-at": (88.41, 0.64),
            "zero-shot": (87.46, 0.33),
        },
    },
    "COMP6248": {
        ("wrn-16-2", "wrn-16-1"): {
            "teacher": (93.93, 0.04),
            "student": (91.23, 0.05),
            "kd-at": (81.69, None),
            "zero-shot": (80.12, None),
        },
        ("wrn-40-1", "wrn-16-1"): {
            "teacher": (93.26, 0.17),
            "student": (91.23, 0.05),
            "kd-at": (81.11, None),
            "zero-shot": (79.29, None),
        },
        ("wrn-40-2", "wrn-16-1"): {
            "teacher": (94.86, 0.12),
            "student": (91.23, 0.05),
            "kd-at": (80.19, None),
            "zero-shot": (81.86, None),
        },
        ("wrn-40-1", "wrn-16-2"): {
            "teacher": (93.26, 0.17),
            "student": (93.93, 0.04),
            "kd-at": (84.97, None),
            "zero-shot": (85.27, None),
        },
        ("wrn-40-2", "wrn-16-2"): {
            "teacher": (94.86, 0.12),
            "student": (93.93, 0.04),
            "kd-at": (85.49, None),
            "zero-shot": (88.54, None),
        },
        ("wrn-40-2", "wrn-40-1"): {
            "teacher": (94.86, 0.12),
            "student": (93.26, 0.17),
            "kd-at": (87.33, None),
            "zero-shot": (83.09, None),
        },
    },
}
TABLE1_DATASET = "cifar10"

# ---------------------------------------------------------------------------- Figure 2 (WRN-40-2 -> WRN-16-1)
# dataset -> series -> M -> (mean, std). Series: no-teacher, kd-at, zero-shot (M = 0; fine-tuned for M > 0).
# NB-ACC gives 3-seed means only (std only at the last zero-shot point); its M = 0 values of 10 for the two
# baselines are chance, plotted by the authors. FERLES: mean ± population std of their per-seed appendix
# tables.
_FERLES_SEEDS = {
    "cifar10": {
        "no-teacher": {
            10: (23.7, 21.68, 25.86),
            25: (34.4, 38.0, 36.07),
            50: (41.69, 44.2, 45.27),
            75: (54.45, 51.89, 50.99),
            100: (57.02, 56.87, 56.69),
        },
        "kd-at": {
            10: (39.08, 35.33, 36.49),
            25: (60.05, 58.94, 63.05),
            50: (70.9, 65.83, 68.68),
            75: (73.84, 74.29, 77.0),
            100: (76.67, 76.72, 79.57),
        },
        "zero-shot": {100: (85.27, 84.73, 85.35)},
    },
    "svhn": {
        "no-teacher": {
            10: (11.97, 12.67, 11.73),
            25: (31.83, 34.21, 26.82),
            50: (44.08, 45.93, 42.93),
            75: (50.07, 41.88, 53.96),
            100: (56.71, 69.58, 59.56),
        },
        "kd-at": {
            10: (37.35, 31.32, 33.88),
            25: (48.71, 48.89, 47.44),
            50: (68.84, 65.33, 66.48),
            75: (78.51, 78.4, 79.28),
            100: (81.18, 79.63, 81.45),
        },
        "zero-shot": {0: (94.21, 93.85, 93.94)},
    },
}

FIGURE2 = {
    "NB-ACC": {
        "svhn": {
            "no-teacher": {
                0: (10.0, None),
                10: (10.88, None),
                25: (19.71, None),
                50: (54.83, None),
                75: (64.26, None),
                100: (73.18, None),
            },
            "kd-at": {
                0: (10.0, None),
                10: (24.57, None),
                25: (40.25, None),
                50: (54.03, None),
                75: (69.69, None),
                100: (77.72, None),
            },
            "zero-shot": {
                0: (94.37, None),
                10: (94.36, None),
                25: (94.37, None),
                50: (94.35, None),
                75: (94.38, None),
                100: (94.41, 0.05),
            },
        },
        "cifar10": {
            "no-teacher": {
                0: (10.0, None),
                10: (25.79, None),
                25: (33.5, None),
                50: (44.88, None),
                75: (55.62, None),
                100: (58.80, None),
            },
            "kd-at": {
                0: (10.0, None),
                10: (40.32, None),
                25: (57.0, None),
                50: (68.0, None),
                75: (72.0, None),
                100: (76.0, None),
            },
            "zero-shot": {
                0: (83.69, 0.58),
                10: (84.68, None),
                25: (84.71, None),
                50: (85.28, None),
                75: (85.75, None),
                100: (85.91, 0.24),
            },
        },
    },
    "FERLES": {
        dataset: {
            series: {m: (mean_std(v) if len(v) > 1 else (v[0], None)) for m, v in points.items()}
            for series, points in by_series.items()
        }
        for dataset, by_series in _FERLES_SEEDS.items()
    },
}
FIGURE2["FERLES"]["cifar10"]["zero-shot"][0] = (83.63, 0.15)  # their Table 1, WRN-40-2 -> WRN-16-1

# Figure 2's horizontal reference lines (NB-ACC), and the paper's text values beside them.
REFERENCE_LINES = {
    "svhn": {"KD+AT, full data": 95.88, "student, full data": 95.71, "teacher, full data": 96.50},
    "cifar10": {"KD+AT, full data": 91.92, "student, full data": 91.55, "teacher, full data": 95.13},
}
OTHER_POINTS = {"cifar10": {"VID (Ahn et al.), M = 100": 81.59}}  # PAPER §4.2

# ---------------------------------------------------------------------------------- Table 2 (MTE, K = 100)
# source -> dataset -> {"zero-shot": mte, "kd-at": mte}. The KD+AT student's M: not stated by the paper;
# both reproductions used M = 200.
TABLE2 = {
    "PAPER": {"svhn": {"zero-shot": 0.09, "kd-at": 0.64}, "cifar10": {"zero-shot": 0.22, "kd-at": 0.68}},
    "NB-MTE": {
        "svhn": {"zero-shot": 0.0941, "kd-at": 0.6361},
        "cifar10": {"zero-shot": 0.2182, "kd-at": 0.7182},
    },
    "FERLES": {"svhn": {"zero-shot": 0.11, "kd-at": 0.83}, "cifar10": {"zero-shot": 0.18, "kd-at": 0.81}},
    "COMP6248": {
        "svhn": {"zero-shot": 0.257, "kd-at": 0.857},
        "cifar10": {"zero-shot": 0.246, "kd-at": 0.795},
    },
}


# ---------------------------------------------------------------------------------- the data-free benchmark
# The zju-vipa Fast-Datafree README table (Fang et al. 2022; the same code base as CMI, Fang et al. 2021):
# top-1 test accuracy (%), **best over training** (their datafree_kd.py keeps the best epoch), and GPU-hours.
# Keys are our run-id series names; `fast` carries Fast-2/5/10 (their synthesis steps per batch). The README's
# "KD" row (95.20 in every column, a copy error) is left out. NAYER (`nayer`, a later paper) has no row: its
# README gives its results only as an image, so its published cells stay empty (docs/decisions.md, "NAYER").
BENCHMARK_SOURCE = "Fast-Datafree README (best over training)"
BENCHMARK_TEACHERS = {
    "cifar10": {"resnet-34": 95.70, "vgg-11": 92.25, "wrn-40-2": 94.87},
    "cifar100": {"resnet-34": 78.05, "vgg-11": 71.32, "wrn-40-2": 75.83},
}
BENCHMARK = {  # dataset -> row -> one value per BENCHMARK_PAIRS column
    "cifar10": {
        "student trained on the data": (95.20, 95.20, 91.12, 93.94, 93.95),
        "deepinversion": (93.26, 90.36, 83.04, 86.85, 89.72),
        "cmi": (94.84, 91.13, 90.01, 92.78, 92.52),
        "dafl": (92.22, 81.10, 65.71, 81.33, 81.55),
        "zero-shot-benchmark": (93.32, 89.46, 83.74, 86.07, 89.66),
        "dfq": (94.61, 90.84, 86.14, 91.69, 92.01),
        "fast-2": (92.62, 84.67, 88.36, 89.56, 89.68),
        "fast-5": (93.63, 89.94, 88.90, 92.04, 91.96),
        "fast": (94.05, 90.53, 89.29, 92.51, 92.45),
    },
    "cifar100": {
        "student trained on the data": (77.10, 77.10, 65.31, 72.19, 73.56),
        "deepinversion": (61.32, 54.13, 53.77, 61.33, 61.34),
        "cmi": (77.04, 70.56, 57.91, 68.88, 68.75),
        "dafl": (74.47, 54.16, 20.88, 42.83, 43.70),
        "zero-shot-benchmark": (67.74, 54.31, 36.66, 53.60, 54.59),
        "dfq": (77.01, 66.21, 51.27, 54.43, 64.79),
        "fast-2": (69.76, 62.83, 41.77, 53.15, 57.08),
        "fast-5": (72.82, 65.28, 52.90, 61.80, 63.83),
        "fast": (74.34, 67.44, 54.02, 63.91, 65.12),
    },
}
BENCHMARK_HOURS = {  # CIFAR-10 GPU-hours per run, as the README gives them
    "deepinversion": (42.1, 20.2, 16.9, 21.9, 18.2),
    "cmi": (19.0, 11.6, 13.3, 14.1, 13.6),
    "dafl": (2.73, 0.73, 1.73, 1.53, 1.60),
    "zero-shot-benchmark": (1.67, 0.33, 0.87, 0.87, 0.87),
    "dfq": (8.79, 1.50, 0.75, 0.75, 0.75),
    "fast-2": (0.06, 0.03, 0.03, 0.03, 0.03),
    "fast-5": (0.14, 0.08, 0.08, 0.09, 0.08),
    "fast": (0.28, 0.15, 0.15, 0.17, 0.17),
}


def benchmark_value(dataset: str, row: str, teacher: str, student: str) -> float | None:
    """The published best-over-training accuracy of `row` (a series name) on one pair, or None."""
    if (teacher, student) not in BENCHMARK_PAIRS:
        return None
    values = BENCHMARK.get(dataset, {}).get(row)
    return values[BENCHMARK_PAIRS.index((teacher, student))] if values else None
