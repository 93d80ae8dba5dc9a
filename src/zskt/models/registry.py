"""The named networks: one literal registry, `build_model`, and the name rules.

`MODELS` maps each registered name to its family, its builder `(num_classes, in_channels) -> nn.Module` and
the layers whose outputs feed the attention term by default. Besides the registered names, any Wide ResNet
`wrn-DEPTH-WIDTH` (DEPTH = 6n+4, WIDTH >= 1) builds by name. Names are case-insensitive, and the reference
codes' spellings without the dash (`WRN-40-2`, `resnet34`, `vgg11`) are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from zskt.errors import ZsktError
from zskt.models.resnet import resnet18, resnet34
from zskt.models.vgg import vgg11
from zskt.models.wresnet import WideResNet, parse_wrn_name

WRN_FEATURE_LAYERS = (
    "block1",
    "block2",
    "block3",
)  # the three groups: exactly the forward's (act1, act2, act3)


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its family, its builder, its default feature layers, a one-line description."""

    family: str
    build: Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> a freshly initialised network
    feature_layers: tuple[str, ...]
    about: str


def _wrn(depth: int, widen: int) -> Callable[[int, int], nn.Module]:
    return lambda num_classes, in_channels: WideResNet(
        depth, widen, num_classes=num_classes, in_channels=in_channels
    )


MODELS: dict[str, ModelEntry] = {
    # The paper's four Wide ResNets (teachers WRN-40-2, WRN-16-2; students WRN-16-1, WRN-16-2; SPEC.md §1).
    "wrn-16-1": ModelEntry("wrn", _wrn(16, 1), WRN_FEATURE_LAYERS, "Wide ResNet, the paper's student"),
    "wrn-16-2": ModelEntry(
        "wrn", _wrn(16, 2), WRN_FEATURE_LAYERS, "Wide ResNet, the paper's student/teacher"
    ),
    "wrn-40-1": ModelEntry("wrn", _wrn(40, 1), WRN_FEATURE_LAYERS, "Wide ResNet, the paper's teacher"),
    "wrn-40-2": ModelEntry("wrn", _wrn(40, 2), WRN_FEATURE_LAYERS, "Wide ResNet, the paper's teacher"),
    # The data-free benchmark's CIFAR networks, with the zju-vipa DataFree code's state_dict keys.
    "resnet-18": ModelEntry(
        "resnet",
        resnet18,
        ("layer2", "layer3", "layer4"),
        "CIFAR ResNet-18 (3x3 stem, no max-pool), zju-vipa keys",
    ),
    "resnet-34": ModelEntry(
        "resnet",
        resnet34,
        ("layer2", "layer3", "layer4"),
        "CIFAR ResNet-34 (3x3 stem, no max-pool), zju-vipa keys",
    ),
    "vgg-11": ModelEntry(
        "vgg", vgg11, ("block1", "block2", "block4"), "VGG-11 with batch norm for 32x32 images, zju-vipa keys"
    ),
}

_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$")
_NO_DASH = re.compile(r"^(resnet|vgg)(\d+)$")  # the reference codes' `resnet34`, `vgg11`


def canonical_name(name: str) -> str:
    """`"WRN-40-2"` -> `"wrn-40-2"`, `"resnet34"` -> `"resnet-34"`: the spelling MODELS uses."""
    key = str(name).strip().lower()
    return _NO_DASH.sub(r"\1-\2", key)


def is_model_name(name: str) -> bool:
    """True for a registered name or any `wrn-D-W` (depth and width are checked when building)."""
    key = canonical_name(name)
    return key in MODELS or _WRN_NAME.match(key) is not None


def model_names_hint() -> str:
    """The list of names for error messages and help text."""
    return f"{', '.join(MODELS)}, or any wrn-DEPTH-WIDTH (DEPTH = 6n+4)"


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A freshly initialised network by name: a registered one, or any Wide ResNet `wrn-DEPTH-WIDTH`."""
    key = canonical_name(name)
    if key in MODELS:
        return MODELS[key].build(num_classes, in_channels)
    if _WRN_NAME.match(key):
        depth, widen = parse_wrn_name(key)
        return WideResNet(depth, widen, num_classes=num_classes, in_channels=in_channels)
    raise ZsktError(f"unknown model {name!r}; expected one of {model_names_hint()}")


def default_feature_layers(model: nn.Module) -> tuple[str, ...] | None:
    """The layers whose outputs feed the attention term when none are given, or None where nothing is known.

    Registered families: their registry entry (a Wide ResNet's three groups, whatever its depth). Otherwise a
    `default_feature_layers` attribute of the network, or, for a timm model, the last three stages of its
    `feature_info` (timm's own list of the modules that end a stage).
    """
    if isinstance(model, WideResNet):
        return WRN_FEATURE_LAYERS
    own = getattr(model, "default_feature_layers", None)
    if own:
        return tuple(own)
    info = getattr(model, "feature_info", None)
    modules = (
        [entry.get("module") for entry in info]
        if isinstance(info, list) and all(isinstance(entry, dict) for entry in info)
        else []
    )
    if modules and all(isinstance(name, str) and name for name in modules):
        return tuple(modules[-3:])
    return None
