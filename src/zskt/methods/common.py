"""What every teacher -> student method shares: the teacher and student from their command-line specs (a
registered name, a model file, `module:callable`, `timm:NAME`), checked against the data and wrapped so their
forward gives `(logits, feature_maps)` (docs/own_models_and_data.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zskt.config import check, field
from zskt.data import DatasetInfo, dataset_name
from zskt.models import (
    MODELS,
    check_feature_pairs,
    is_model_name,
    model_names_hint,
    resolve_network,
    save_model,
    with_features,
)
from zskt.models.registry import canonical_name
from zskt.models.wresnet import check_wrn_size, parse_wrn_name
from zskt.runtime import PRECISIONS, Precision


@dataclass(frozen=True)
class TeacherStudentConfig:
    """The fields every data-free teacher -> student method shares (zero-shot, the generator family, the
    inversion family), first in each method's config and `--help`: what to distil, then how the run computes.
    A method redeclares a field to give it its own default or help."""

    teacher: str = field(
        "",
        "teacher file: a project model.pt, an authors' last.pth.tar, a Ferles *-dict.pth, a zju-vipa "
        "DataFree teacher, or any network file (docs/own_models_and_data.md)",
    )
    student: str = field(
        "wrn-16-1", "student network: a name (`zskt list`), module:callable, file.py:callable or timm:NAME"
    )
    trust_checkpoint: bool = field(
        False,
        "allow network files that need a full unpickle (a whole saved model, an external network's record): "
        "they can run code; only for files you trust",
    )
    dataset: str = field(
        "digits",
        "data set the teacher was trained on: a name, npz:FILE or folder:DIR (its test split scores the "
        "student; only the test split is read)",
    )
    eval_batch_size: int = field(500, "test batch size (eval mode: any size gives the same accuracy)")
    seed: int = field(0, "seed for the student and every draw of the method")
    device: str = field("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    precision: str = field("auto", "fp32, bf16 (autocast), or auto (fp32; docs/decisions.md)")
    image_size: int | None = field(
        None,
        "digits only: side of the resized images (16 unless set); must be the size the teacher was "
        "trained at",
    )
    data_dir: str | None = field(
        None, "data root for the test split ($ZSKT_DATA or ~/.cache/zskt/data unless set)"
    )
    download: bool = field(False, "download missing data files (CIFAR-10, SVHN, Fashion-MNIST)")

    def __post_init__(self):
        dataset_name(self.dataset)  # a one-line error for an unknown name, before any file is read
        check_network_spec(self.student, "--student")
        check(self.eval_batch_size > 0, f"eval_batch_size must be positive, got {self.eval_batch_size}")
        check(
            self.precision in PRECISIONS,
            f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}",
        )


def frozen_logits(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """A frozen (eval-mode) network's logits for `x`, without a graph, in `precision.inference_chunk` parts:
    the same logits (an eval-mode network answers each image on its own), fewer cache misses on a CPU.
    Accepts networks returning `(logits, features)` or plain logits."""
    chunk = precision.inference_chunk or len(x)
    with torch.no_grad(), precision.autocast():
        outputs = [model(part) for part in x.split(chunk)]
    return torch.cat([out[0] if isinstance(out, tuple) else out for out in outputs])


def check_network_spec(spec: str, role: str) -> None:
    """Config-time check of a `--student`-like spec: a plain name must be registered or a `wrn-D-W` of a
    valid depth and width; files, `module:callable` and `timm:NAME` are resolved (and checked) before
    the run folder is made."""
    if ":" in spec or spec.endswith((".pt", ".pth", ".tar", ".py")) or "/" in spec:
        return
    check(
        is_model_name(spec),
        f"unknown {role.lstrip('-')} {spec!r}; choose {model_names_hint()}, a model file, "
        "module:callable or timm:NAME",
    )
    key = canonical_name(spec)
    if key not in MODELS:  # a wrn-D-W beyond the registered ones: its depth and width, without building it
        check_wrn_size(*parse_wrn_name(key))


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
