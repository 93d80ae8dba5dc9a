"""What every teacher -> student method shares: the teacher and student from their command-line specs (a
registered name, a model file, `module:callable`, `timm:NAME`), checked against the data and wrapped so their
forward gives `(logits, feature_maps)` (docs/own_models_and_data.md)."""

from __future__ import annotations

from typing import Any

import torch

from zskt.config import check
from zskt.data import DatasetInfo
from zskt.models import (
    check_feature_pairs,
    is_model_name,
    model_names_hint,
    resolve_network,
    save_model,
    with_features,
)


def check_network_spec(spec: str, role: str) -> None:
    """Config-time check of a `--student`-like spec: a plain name must be registered; files, `module:callable`
    and `timm:NAME` are resolved (and checked) before the run folder is made."""
    if ":" in spec or spec.endswith((".pt", ".pth", ".tar", ".py")) or "/" in spec:
        return
    check(
        is_model_name(spec),
        f"unknown {role.lstrip('-')} {spec!r}; choose {model_names_hint()}, a model file, "
        "module:callable or timm:NAME",
    )


def load_teacher(cfg: Any, info: DatasetInfo, image_size: int | None = None) -> torch.nn.Module:
    """`--teacher`, trained (a bare name is refused), from the data set it was trained on, with its feature
    maps (`--teacher-layers`, or its family's defaults)."""
    teacher = resolve_network(
        cfg.teacher,
        role="--teacher",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=image_size,
        device="cpu",
        trust=getattr(cfg, "trust_checkpoint", False),
        trained=True,
        dataset=cfg.dataset,
    )
    return with_features(teacher, getattr(cfg, "teacher_layers", None), role="--teacher-layers")


def build_student(
    cfg: Any, info: DatasetInfo, image_size: int, teacher: torch.nn.Module | None = None, beta: float = 0.0
) -> torch.nn.Module:
    """A fresh `--student` (seed first: its initialisation draws from the global RNG) with its feature maps;
    with an attention weight `beta` > 0 the maps must pair up with the teacher's."""
    student = resolve_network(
        cfg.student,
        role="--student",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=image_size,
        device="cpu",
        trust=getattr(cfg, "trust_checkpoint", False),
    )
    student = with_features(student, getattr(cfg, "student_layers", None), role="--student-layers")
    if beta and teacher is not None:
        check_feature_pairs(teacher, student, in_channels=info.in_channels, image_size=image_size)
    return student


def save_student(log: Any, student: torch.nn.Module, cfg: Any, image_size: int, test_accuracy: float) -> None:
    """The run's `model.pt`: the trained student with its spec, data set, image size, final test accuracy,
    command and teacher recorded (every teacher -> student method writes the same record)."""
    save_model(
        student,
        log.out / "model.pt",
        spec=cfg.student,
        dataset=cfg.dataset,
        image_size=image_size,
        test_accuracy=test_accuracy,
        command=log.command,
        teacher=cfg.teacher,
    )
