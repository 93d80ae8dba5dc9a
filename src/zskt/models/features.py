"""Feature maps from any network: `(logits, feature_maps) = FeatureModel(model, layers)(x)`.

The methods' contract is a forward that returns `(logits, (map1, map2, ...))`. The Wide ResNets return that
themselves (their three groups). Any other network, whose forward returns logits, is wrapped: the wrapper runs
it with forward hooks on the named layers (dotted module names, as `model.named_modules()` gives them, so
`layer4` or `layer4.1.bn2`) and returns the outputs of those layers, in the order given. A network whose
forward returns a tuple `(logits, maps)` already and is given no layers is passed through unchanged.

The hooks are registered for the one forward call and removed after it, so a wrapper survives deepcopy,
`frozen_copy` (which replaces batch norms by other modules of the same name) and pickling. A hooked layer
that runs more than once in a forward yields its last output; a layer whose output a later in-place
operation changes (an `nn.ReLU(inplace=True)` right after it) yields the changed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from zskt.errors import ZsktError
from zskt.models.registry import default_feature_layers
from zskt.models.wresnet import WideResNet


def parse_layers(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`"layer2,layer3,layer4"` (the `--feature-layers` spelling) -> `("layer2", "layer3", "layer4")`;
    None or "" -> None (the network's defaults)."""
    if text is None:
        return None
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [str(name).strip() for name in names if str(name).strip()]
    return tuple(names) or None


def layer_names_hint(model: nn.Module, limit: int = 12) -> str:
    """A brief list of a network's top-level layers for error messages (dotted names reach inside them)."""
    names = [name for name, _ in model.named_children()]
    shown = ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
    return (
        f"its top-level layers are {shown or 'none'}; dotted names reach inside them (e.g. {names[-1]}.0)"
        if names
        else "it has no sub-layers"
    )


def check_layers(model: nn.Module, layers: Sequence[str], role: str = "--feature-layers") -> None:
    """One-line ZsktError unless every name is a sub-module of `model`."""
    known = {name for name, _ in model.named_modules() if name}
    for name in layers:
        if name not in known:
            raise ZsktError(f"{role}: the network has no layer {name!r}; {layer_names_hint(model)}")


def _keep(store: dict, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    store[name] = output


class FeatureModel(nn.Module):
    """`model` with a forward that returns `(logits, tuple of the named layers' outputs)`.

    `layers` empty: the features are those the network's own forward returns as `(logits, maps)`, or `()`
    when it returns logits only (enough for losses without an attention term). The wrapped network is
    `.module` (state_dict keys get a `module.` prefix; `save_model` unwraps it).
    """

    wraps_network = True  # checkpoints._unwrap: the file holds the network, not the wrapper

    def __init__(self, model: nn.Module, layers: Sequence[str] = ()):
        super().__init__()
        self.module = model
        self.layers = tuple(layers)
        check_layers(model, self.layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if not self.layers:
            out = self.module(x)
            if isinstance(out, (tuple, list)):  # (logits, maps), or the authors' flat (logits, *maps)
                rest = out[1] if len(out) == 2 and isinstance(out[1], (tuple, list)) else out[1:]
                return out[0], tuple(rest)
            return out, ()
        store: dict[str, torch.Tensor] = {}
        handles = [
            self.module.get_submodule(name).register_forward_hook(partial(_keep, store, name))
            for name in self.layers
        ]
        try:
            out = self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.layers if name not in store]
        if missing:
            raise ZsktError(
                f"feature layer {missing[0]!r} did not run in the network's forward; choose layers "
                "that run for every input (--feature-layers)"
            )
        maps = tuple(store[name] for name in self.layers)
        if not all(isinstance(m, torch.Tensor) for m in maps):
            raise ZsktError(
                "a feature layer returned something other than a tensor; choose layers whose "
                "output is one tensor (--feature-layers)"
            )
        return (out[0] if isinstance(out, (tuple, list)) else out), maps

    def extra_repr(self) -> str:
        return f"layers={self.layers}"


def with_features(
    model: nn.Module, layers: str | Sequence[str] | None = None, *, role: str = "--feature-layers"
) -> nn.Module:
    """`model` as a network whose forward returns `(logits, feature_maps)`.

    With `layers` given (names or the comma-separated option text), the maps are those layers' outputs.
    Without: a Wide ResNet is returned as it is (its forward gives its three groups); a network that knows its
    feature layers (registered families: ResNet `layer2,layer3,layer4`, VGG `block1,block2,block4`; a
    `default_feature_layers` attribute; a timm model's last three `feature_info` stages) is wrapped with them;
    any other network is wrapped with none (its forward's own `(logits, maps)` tuple, or no maps).
    """
    if isinstance(model, FeatureModel):
        model = model.module
    names = parse_layers(layers)
    if names is None:
        if isinstance(model, WideResNet):
            return model
        names = default_feature_layers(model) or ()
    try:
        return FeatureModel(model, names)
    except ZsktError as e:
        raise ZsktError(str(e).replace("--feature-layers", role, 1)) from None


@torch.no_grad()
def feature_shapes(model: nn.Module, in_channels: int, image_size: int) -> list[tuple[int, ...]]:
    """Shapes (C, H, W) of the feature maps a `(logits, maps)` network gives for one image of that size."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        _, maps = model(torch.zeros(2, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return [tuple(m.shape[1:]) for m in maps]


def check_feature_pairs(teacher: nn.Module, student: nn.Module, *, in_channels: int, image_size: int) -> None:
    """One-line ZsktError unless the two networks give as many feature maps as each other, pairwise of equal
    spatial size (the attention term compares maps position by position; channel counts may differ)."""
    t, s = (feature_shapes(m, in_channels, image_size) for m in (teacher, student))
    if len(t) != len(s) or any(a[1:] != b[1:] for a, b in zip(t, s, strict=False)):

        def show(shapes: list) -> str:
            return ", ".join("x".join(str(v) for v in shape[1:]) for shape in shapes) or "none"

        raise ZsktError(
            f"the teacher's feature maps ({show(t)}) and the student's ({show(s)}) do not pair up "
            f"at {image_size}x{image_size} images; choose layers of equal sizes with the feature "
            "layer options, or pass --beta 0 (no attention term)"
        )
