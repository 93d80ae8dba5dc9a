"""The networks: the Wide ResNets of the paper, the data-free benchmark's CIFAR ResNets and VGG-11, any
network a user brings, the generator, and their checkpoints.

MODELS (models/registry.py) is the literal registry of named networks; any `wrn-DEPTH-WIDTH` builds by name.
`resolve_network` turns a `--teacher`/`--student` option into a network (a name, a file, `module:callable`,
`timm:NAME`); `with_features` gives any network the methods' `(logits, feature_maps)` forward.
"""

from __future__ import annotations

from torch import nn

from zskt.models.checkpoints import (
    GENERATOR_FORMAT,
    MODEL_FORMAT,
    check_image_size,
    infer_family,
    infer_generator_arch,
    infer_resnet_arch,
    infer_vgg_arch,
    infer_wrn_arch,
    load_generator,
    load_model,
    load_model_for,
    read_checkpoint,
    save_generator,
    save_model,
)
from zskt.models.features import (
    FeatureModel,
    check_feature_pairs,
    feature_shapes,
    parse_layers,
    with_features,
)
from zskt.models.frozen import batchnorm_layers, frozen_copy
from zskt.models.generator import Generator
from zskt.models.networks import (
    build_from_callable,
    build_timm,
    check_network,
    load_trusted,
    network_label,
    resolve_network,
)
from zskt.models.registry import (
    MODELS,
    ModelEntry,
    build_model,
    canonical_name,
    default_feature_layers,
    is_model_name,
    model_names_hint,
)
from zskt.models.resnet import ResNet
from zskt.models.vgg import VGG
from zskt.models.wresnet import WideResNet, parse_wrn_name


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "GENERATOR_FORMAT",
    "MODELS",
    "MODEL_FORMAT",
    "VGG",
    "FeatureModel",
    "Generator",
    "ModelEntry",
    "ResNet",
    "WideResNet",
    "batchnorm_layers",
    "build_from_callable",
    "build_model",
    "build_timm",
    "canonical_name",
    "check_feature_pairs",
    "check_image_size",
    "check_network",
    "count_parameters",
    "default_feature_layers",
    "feature_shapes",
    "frozen_copy",
    "infer_family",
    "infer_generator_arch",
    "infer_resnet_arch",
    "infer_vgg_arch",
    "infer_wrn_arch",
    "is_model_name",
    "load_generator",
    "load_model",
    "load_model_for",
    "load_trusted",
    "model_names_hint",
    "network_label",
    "parse_layers",
    "parse_wrn_name",
    "read_checkpoint",
    "resolve_network",
    "save_generator",
    "save_model",
    "with_features",
]
