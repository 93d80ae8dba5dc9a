"""The networks: the Wide ResNets that teach and learn, the generator, and their checkpoints.

MODELS is the registry of named Wide ResNets: the four the paper uses (SPEC.md §1), as (depth, widen_factor).
"""

from __future__ import annotations

from torch import nn

from zskt.errors import ZsktError
from zskt.models.checkpoints import (
    GENERATOR_FORMAT,
    MODEL_FORMAT,
    check_image_size,
    infer_generator_arch,
    infer_wrn_arch,
    load_generator,
    load_model,
    load_model_for,
    read_checkpoint,
    save_generator,
    save_model,
)
from zskt.models.generator import Generator
from zskt.models.wresnet import WideResNet, parse_wrn_name

MODELS = {
    "wrn-16-1": (16, 1),
    "wrn-16-2": (16, 2),
    "wrn-40-1": (40, 1),
    "wrn-40-2": (40, 2),
}


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    """A freshly initialised registered Wide ResNet; the name is case-insensitive (the authors write
    "WRN-40-2")."""
    key = str(name).strip().lower()
    if key not in MODELS:
        raise ZsktError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    depth, widen_factor = MODELS[key]
    return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "GENERATOR_FORMAT",
    "MODELS",
    "MODEL_FORMAT",
    "Generator",
    "WideResNet",
    "build_model",
    "check_image_size",
    "count_parameters",
    "infer_generator_arch",
    "infer_wrn_arch",
    "load_generator",
    "load_model",
    "load_model_for",
    "parse_wrn_name",
    "read_checkpoint",
    "save_generator",
    "save_model",
]
