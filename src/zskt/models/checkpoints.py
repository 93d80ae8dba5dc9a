"""Saving and loading networks: the project's own files, and the authors' and the Ferles reproduction's files
as they were published (SPEC.md §7), with one-line errors for every way a file can be the wrong one.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zskt.errors import ZsktError
from zskt.io import atomic_torch_save
from zskt.models.generator import Generator
from zskt.models.registry import canonical_name
from zskt.models.resnet import ResNet
from zskt.models.vgg import VGG
from zskt.models.wresnet import WideResNet, parse_wrn_name

MODEL_FORMAT = "zskt-model"
GENERATOR_FORMAT = "zskt-generator"
FORMAT_VERSION = 1

# Prefixes that wrappers put in front of every key: nn.DataParallel / DistributedDataParallel ("module.") and
# torch.compile ("_orig_mod."). load_generator also drops "generator.": the authors' LearnableLoader holds the
# network as `self.generator`, so their generator_state_dict keys read "generator.layers.0.weight".
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Ferles et al. name the same modules differently; their files map one to one onto the authors' keys (SPEC
# §7).
_FERLES_RENAMES = (
    (re.compile(r"^(block\d+)\.nblockLayer\."), r"\1.layer."),
    (re.compile(r"^batch_norm\."), "bn1."),
    (re.compile(r"\.batch_norm([12])\."), r".bn\1."),
    (re.compile(r"\.conv_inp\."), ".convShortcut."),
)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since PyTorch 1.6 writes a zip archive holding data.pkl
# The legacy format (PyTorch < 1.6, so the authors' files) is a pickle stream whose first object is this magic
# number, 0x1950a86a20f9469cfc6c, stored little-endian: a plain pickle lacks it.
_LEGACY_MAGIC = b"l\xfc\x9cF\xf9 j\xa8P\x19"


# ---------------------------------------------------------------------------------------------- saving


def save_model(model: nn.Module, path: str | os.PathLike, *, spec: str | None = None, **meta: Any) -> None:
    """Write a network atomically as a self-describing ``zskt-model`` file; ``meta`` is stored as given.

    A registered family (Wide ResNet, ResNet, VGG) records its architecture and loads back with `load_model`.
    Any other network is recorded as family "external" with `spec` (the `module:callable` that built it) and
    its class name: its weights load back only through that code (`zskt.models.resolve_network` with
    trust=True, since rebuilding it imports the code the file names).
    """
    model = _unwrap(model)
    if isinstance(model, (WideResNet, ResNet, VGG)):
        atomic_torch_save(Path(path), _record(MODEL_FORMAT, model, meta))
        return
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    arch = {"family": "external", "spec": spec, "class": cls}
    atomic_torch_save(Path(path), _record(MODEL_FORMAT, model, meta, arch=arch))


def save_generator(generator: nn.Module, path: str | os.PathLike, **meta: Any) -> None:
    """Write a Generator atomically as a self-describing ``zskt-generator`` file; ``meta`` is stored as
    given."""
    generator = _unwrap(generator)
    if not isinstance(generator, Generator):
        raise TypeError(f"save_generator expects a Generator, got {type(generator).__name__}")
    atomic_torch_save(Path(path), _record(GENERATOR_FORMAT, generator, meta))


def _record(fmt: str, module: nn.Module, meta: dict, arch: dict | None = None) -> dict:
    state = module.state_dict()
    cpu_state = OrderedDict((key, value.detach().cpu()) for key, value in state.items())
    if hasattr(state, "_metadata"):  # per-module versions, which BatchNorm consults when loading
        cpu_state._metadata = state._metadata
    return {
        "format": fmt,
        "version": FORMAT_VERSION,
        "arch": module.arch() if arch is None else arch,
        "state_dict": cpu_state,
        "meta": meta,
    }


def _unwrap(module: nn.Module) -> nn.Module:
    # DataParallel keeps the network as .module, torch.compile as ._orig_mod, the feature wrapper
    # (models/features.py, marked by `wraps_network`) as .module; the file should hold the network.
    while (
        isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        or hasattr(module, "_orig_mod")
        or getattr(module, "wraps_network", False)
    ):
        module = module.module if hasattr(module, "module") else module._orig_mod
    return module


# ---------------------------------------------------------------------------------------------- reading


class UntrustedCheckpoint(ZsktError):
    """A checkpoint that only a full unpickle could read (which can run any code), refused without trust."""


_TRUST = contextvars.ContextVar("zskt_trust_checkpoints", default=False)


@contextlib.contextmanager
def trusting_checkpoints(trust: bool = True):
    """Within this block, checkpoints that need a full unpickle are read (`--trust-checkpoint` sets it for a
    command): for files whose origin you trust, since unpickling one can run any code."""
    token = _TRUST.set(bool(trust))
    try:
        yield
    finally:
        _TRUST.reset(token)


def _allowed_globals() -> list:
    """The classes and functions that the files zskt reads hold besides tensors and plain containers, allowed
    by name to `torch.load(weights_only=True)`: `argparse.Namespace` (the authors' files keep their `args`)
    and NumPy arrays and scalars (FSKT's KD+AT files keep a NumPy index array under `indices`), under both the
    NumPy 1 (`numpy.core`) and NumPy 2 (`numpy._core`) module names."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray
    allowed: list = [argparse.Namespace, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    for name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{name}._reconstruct"), (multiarray.scalar, f"{name}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles a dtype's class
    if dtypes is not None:
        names = getattr(dtypes, "__all__", ())
        allowed += [getattr(dtypes, n) for n in names if isinstance(getattr(dtypes, n, None), type)]
    return allowed


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """`torch.load` that never runs code from the file: `weights_only=True` with `_allowed_globals`. A file
    that needs anything else raises UntrustedCheckpoint (one line naming what and `--trust-checkpoint`),
    unless `trust` (default: `trusting_checkpoints`, i.e. --trust-checkpoint) allows a full unpickle."""
    if trust is None:
        trust = _TRUST.get()
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with _allowing(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # Only a reference to a Python global that is not allowed means "needs trust"; anything else the
        # weights-only unpickler stumbles on (an unknown opcode) is a corrupt file, for the caller to report.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if "weights only load failed" not in str(err).lower() or not found:
            raise
        what = f"a reference to {found.group(1)}"
        raise UntrustedCheckpoint(
            f"checkpoint {path} holds {what}, which only a full unpickle can read, and that can run any "
            "code; if you trust the file's origin, pass --trust-checkpoint (Python: trust=True)"
        ) from None


def _allowing(allowed: list):
    # safe_globals arrived in PyTorch 2.5, add_safe_globals (process-wide) in 2.4; before that only tensors
    # and plain containers load without trust.
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        return serialization.safe_globals(allowed)
    if hasattr(serialization, "add_safe_globals"):
        serialization.add_safe_globals(allowed)
    return contextlib.nullcontext()


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trust: bool | None = None) -> Any:
    """``torch.load`` with a one-line ZsktError for a missing, foreign, truncated or corrupt file.

    Files load with ``weights_only=True`` and an explicit allow-list (`_allowed_globals`: the authors' `args`
    and FSKT's NumPy `indices`), so reading one never runs code from it. A file that needs a full unpickle
    (e.g. a pickled whole network) is refused in one line unless ``trust`` (default: the command's
    ``--trust-checkpoint``, `trusting_checkpoints`) says its origin is trusted.
    """
    path = Path(path)
    if not path.exists():
        raise ZsktError(f"checkpoint {path} not found; expected a file written by torch.save")
    if not path.is_file():
        raise ZsktError(
            f"checkpoint {path} is a {'folder' if path.is_dir() else 'special file'}; expected a file"
        )
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise ZsktError(f"checkpoint {path} is empty; expected a file written by torch.save")
    if head.startswith(_ZIP_MAGIC):
        # The zip's directory sits at its end, so a cut-off copy fails here with a clear cause.
        if not zipfile.is_zipfile(path):
            raise ZsktError(
                f"checkpoint {path} is truncated or corrupt (its zip directory is missing); "
                "expected a complete file written by torch.save"
            )
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise ZsktError(
                    f"checkpoint {path} is not a PyTorch checkpoint (a zip archive without data.pkl); "
                    "expected a file written by torch.save"
                )
    elif _LEGACY_MAGIC not in head:
        kind = "a Python pickle" if head.startswith(b"\x80") else f"it starts with {head[:8]!r}"
        raise ZsktError(
            f"checkpoint {path} is not a PyTorch checkpoint ({kind}); expected a file written by torch.save"
        )
    try:
        return safe_load(path, map_location, trust)
    except UntrustedCheckpoint:
        raise
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, zipfile.BadZipFile) as err:
        raise ZsktError(
            f"checkpoint {path} is truncated or corrupt ({_reason(err)}); "
            "expected a complete file written by torch.save"
        ) from err
    except (ImportError, AttributeError) as err:
        raise ZsktError(
            f"checkpoint {path} could not be unpickled ({_reason(err)}); expected tensors and plain "
            "containers (a pickled whole network needs the code that defined it)"
        ) from err


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= 100 else first[:97] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


# ---------------------------------------------------------------------------------------------- Wide ResNets


def load_model(
    path: str | os.PathLike,
    arch: str | Mapping | None = None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    map_location: Any = "cpu",
    trust: bool | None = None,
) -> nn.Module:
    """Rebuild a network from a checkpoint, load it strictly and return it in eval mode.

    Wide ResNets: the project's ``zskt-model`` files (architecture recorded), the authors' files as published
    (a dict with ``state_dict``: teachers and KD+AT students; or ``student_state_dict``: zero-shot students),
    a bare state_dict, and the Ferles reproduction's ``*-dict.pth`` state_dicts (keys renamed to the
    authors'). The benchmark's CIFAR ResNets and VGG-11 (batch norm): the project's files, and the zju-vipa
    DataFree / CMI / Fast-Datafree teachers (a dict with ``state_dict``) or bare state_dicts with their keys.
    The family and its size are read from the keys and shapes. ``arch`` (a name such as ``"wrn-40-2"`` or
    ``"resnet-34"``, any case, or an ``arch()`` dict), ``num_classes`` and ``in_channels`` are checks: when
    given, a file holding something else is an error. The network ends up on ``map_location`` when that names
    a device.
    ``trust=True`` reads a file that needs a full unpickle (`read_checkpoint`).
    """
    path = Path(path)
    return _model_from(
        read_checkpoint(path, map_location, trust),
        path,
        arch,
        num_classes=num_classes,
        in_channels=in_channels,
        map_location=map_location,
    )


def _model_from(
    obj: Any,
    path: Path,
    arch: str | Mapping | None,
    *,
    num_classes: int | None,
    in_channels: int | None,
    map_location: Any,
) -> nn.Module:
    """`load_model` on a file's already-read contents."""
    state, recorded = _network_weights(obj, path)
    family = recorded.get("family") if recorded is not None else infer_family(state, source=path)
    if family == "external":
        spec = recorded.get("spec") or recorded.get("class")
        raise ZsktError(
            f"checkpoint {path} holds the weights of a network built by {spec}, not a registered model; "
            "load them with zskt.models.resolve_network(path, trust=True) (--trust-checkpoint), which "
            "imports that code"
        )
    if family == "wrn":
        found = (
            _wrn_arch_from_record(recorded, path)
            if recorded is not None
            else infer_wrn_arch(state, source=path)
        )
        found_label = _describe(found["depth"], found["widen_factor"])
        if arch is not None:
            depth, widen = _parse_arch(arch)
            if (depth, widen) != (found["depth"], found["widen_factor"]):
                raise ZsktError(f"checkpoint {path} holds {found_label}, expected {_describe(depth, widen)}")
        model: nn.Module = WideResNet(
            found["depth"],
            found["widen_factor"],
            num_classes=found["num_classes"],
            in_channels=found["in_channels"],
            drop_rate=found.get("drop_rate", 0.0),
        )
    elif family in ("resnet", "vgg"):
        infer = infer_resnet_arch if family == "resnet" else infer_vgg_arch
        found = dict(recorded) if recorded is not None else infer(state, source=path)
        cls = ResNet if family == "resnet" else VGG
        blocks = tuple(found["blocks"]) if family == "resnet" else tuple(tuple(b) for b in found["blocks"])
        model = cls(blocks, num_classes=found["num_classes"], in_channels=found["in_channels"])
        found_label = model.arch()["name"] or f"a {family} with blocks {found['blocks']}"
        if arch is not None:
            wanted = arch.get("name") if isinstance(arch, Mapping) else str(arch).strip().lower()
            if canonical_name(str(wanted)) != found_label:
                raise ZsktError(f"checkpoint {path} holds {found_label}, expected {wanted}")
    else:
        raise ZsktError(f"checkpoint {path} records arch family {family!r}; expected wrn, resnet or vgg")

    if num_classes is not None and num_classes != found["num_classes"]:
        raise ZsktError(
            f"checkpoint {path} holds a {found['num_classes']}-class {found_label}, "
            f"expected {num_classes} classes"
        )
    if in_channels is not None and in_channels != found["in_channels"]:
        raise ZsktError(
            f"checkpoint {path} holds a {found_label} for {found['in_channels']}-channel images, "
            f"expected {in_channels} channels"
        )
    _load_strict(model, state, path, found_label)
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval()


def infer_family(state_dict: Mapping[str, torch.Tensor], source: Any = "state_dict") -> str:
    """ "wrn", "resnet" or "vgg": the family whose key names these weights carry."""
    if "block3.layer.0.conv1.weight" in state_dict or "fc.weight" in state_dict:
        return "wrn"
    if "linear.weight" in state_dict and any(key.startswith("layer4.") for key in state_dict):
        return "resnet"
    if "classifier.weight" in state_dict and "block0.0.weight" in state_dict:
        return "vgg"
    raise ZsktError(
        f"checkpoint {source} does not hold a Wide ResNet, CIFAR ResNet or VGG (found keys "
        f"{_few(list(state_dict))}); expected conv1.weight, block1..3 and fc (Wide ResNet), conv1.weight, "
        "layer1..4 and linear (ResNet) or block0..4 and classifier (VGG)"
    )


def infer_resnet_arch(state_dict: Mapping[str, torch.Tensor], source: Any = "state_dict") -> dict:
    """Blocks per stage, num_classes and in_channels of the CIFAR ResNet whose (zju-vipa-named) weights
    these are."""
    if any(re.match(r"layer\d+\.\d+\.conv3\.", key) for key in state_dict):
        raise ZsktError(
            f"checkpoint {source} holds a Bottleneck ResNet (ResNet-50 or deeper); "
            "expected a BasicBlock ResNet (resnet-18, resnet-34)"
        )
    needed = ("conv1.weight", "linear.weight")
    absent = [key for key in needed if key not in state_dict]
    if absent:
        raise ZsktError(
            f"checkpoint {source} does not hold a CIFAR ResNet (no {', '.join(absent)}; "
            f"found keys {_few(list(state_dict))})"
        )
    blocks = [
        len({m.group(1) for key in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", key))})
        for s in (1, 2, 3, 4)
    ]
    return {
        "family": "resnet",
        "blocks": blocks,
        "num_classes": state_dict["linear.weight"].shape[0],
        "in_channels": state_dict["conv1.weight"].shape[1],
    }


def infer_vgg_arch(state_dict: Mapping[str, torch.Tensor], source: Any = "state_dict") -> dict:
    """Convolution widths per block, num_classes and in_channels of the VGG whose weights these are."""
    blocks = []
    for b in range(5):
        convs = sorted(
            (int(m.group(1)), value.shape[0])
            for key, value in state_dict.items()
            if (m := re.match(rf"block{b}\.(\d+)\.weight$", key)) and value.dim() == 4
        )
        blocks.append([width for _, width in convs])
    if not all(blocks) or "classifier.weight" not in state_dict:
        raise ZsktError(
            f"checkpoint {source} does not hold a VGG (convolutions per block {blocks}; "
            f"found keys {_few(list(state_dict))})"
        )
    return {
        "family": "vgg",
        "blocks": blocks,
        "num_classes": state_dict["classifier.weight"].shape[0],
        "in_channels": state_dict["block0.0.weight"].shape[1],
    }


def infer_wrn_arch(state_dict: Mapping[str, torch.Tensor], source: Any = "state_dict") -> dict:
    """depth, widen_factor, num_classes and in_channels of the Wide ResNet whose (authors'-named) weights
    these are.

    depth = 6n+4 with n the number of ``block1.layer.i`` blocks; the widen factor is block3's width / 64;
    the class count is fc's output size and the input channels are conv1's.
    """
    needed = ("conv1.weight", "block3.layer.0.conv1.weight", "fc.weight")
    absent = [key for key in needed if key not in state_dict]
    if absent:
        raise ZsktError(
            f"checkpoint {source} does not hold a Wide ResNet (no {', '.join(absent)}; "
            f"found keys {_few(list(state_dict))}); expected a Wide ResNet's keys as zskt and the authors' "
            "code name them (conv1, block1-3.layer.N..., bn1, fc)"
        )
    blocks = {m.group(1) for key in state_dict if (m := re.match(r"block1\.layer\.(\d+)\.", key))}
    width = state_dict["block3.layer.0.conv1.weight"].shape[0]
    if not blocks or width % 64 != 0:
        raise ZsktError(
            f"checkpoint {source} does not hold a Wide ResNet ({len(blocks)} blocks in block1, "
            f"block3 width {width}); expected at least one block and a width that is a multiple of 64"
        )
    return {
        "depth": 6 * len(blocks) + 4,
        "widen_factor": width // 64,
        "num_classes": state_dict["fc.weight"].shape[0],
        "in_channels": state_dict["conv1.weight"].shape[1],
    }


def _unpack(
    obj: Any, path: Path, *, own: str, other: str, other_is: str, keys: tuple[str, ...], what: str
) -> tuple[Mapping, Mapping | None]:
    """(weights, recorded arch or None) from a file's object: a module, a project file of format `own`, the
    first of the dict `keys` that holds a mapping (the authors' layouts), or a bare state_dict. A project file
    of the `other` format is refused with `other_is`."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), None
    if not isinstance(obj, Mapping):
        raise ZsktError(f"checkpoint {path} holds a {type(obj).__name__}; expected a dict of weights")
    if obj.get("format") == own:
        _check_version(obj, path)
        return obj["state_dict"], obj["arch"]
    if obj.get("format") == other:
        raise ZsktError(f"checkpoint {path} holds {other_is}")
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return obj[key], None
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):  # a bare state_dict
        return obj, None
    expected = " or ".join(repr(key) for key in keys)
    raise ZsktError(
        f"checkpoint {path} holds no {what} weights (top-level keys {_few(list(obj))}); "
        f"expected {expected}, a {own} file or a bare state_dict"
    )


def _network_weights(obj: Any, path: Path) -> tuple[dict, Mapping | None]:
    """(state_dict with the authors' key names, recorded arch or None) from whatever the file holds:
    `state_dict` (authors' and zju-vipa teachers, FSKT KD+AT students), `student_state_dict` (authors'
    zero-shot students)."""
    state, recorded = _unpack(
        obj,
        path,
        own=MODEL_FORMAT,
        other=GENERATOR_FORMAT,
        other_is="a generator, expected a Wide ResNet, ResNet or VGG (use load_generator)",
        keys=("state_dict", "student_state_dict"),
        what="network",
    )
    state = _strip_prefixes(state, _WRAPPER_PREFIXES)
    if any(".nblockLayer." in key or key.startswith("batch_norm.") for key in state):
        state = {_ferles_to_authors(key): value for key, value in state.items()}
    return state, recorded


def _ferles_to_authors(key: str) -> str:
    for pattern, replacement in _FERLES_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _wrn_arch_from_record(recorded: Mapping, path: Path) -> dict:
    keys = ("depth", "widen_factor", "num_classes", "in_channels")
    if recorded.get("family") != "wrn" or any(key not in recorded for key in keys):
        raise ZsktError(
            f"checkpoint {path} records arch {dict(recorded)!r}; expected a 'wrn' arch with {keys}"
        )
    return dict(recorded)


def _parse_arch(arch: str | Mapping) -> tuple[int, int]:
    if isinstance(arch, Mapping):
        return int(arch["depth"]), int(arch["widen_factor"])
    return parse_wrn_name(arch)


def _describe(depth: int, widen: int) -> str:
    return f"wrn-{depth}-{widen} (depth {depth}, widen {widen})"


def same_dataset(recorded: str, given: str) -> bool:
    """Whether a file's recorded data set is the one given. An `npz:`/`folder:` path was recorded as typed,
    relative to wherever the teacher was trained: the same kind and file or folder name counts as the same."""
    if recorded == given:
        return True
    kinds = [str(name).partition(":")[0].lower() for name in (recorded, given)]
    if kinds[0] in ("npz", "folder") and kinds[0] == kinds[1]:
        names = [
            Path(str(name).partition(":")[2].split(",")[0].rstrip("/")).name for name in (recorded, given)
        ]
        return names[0] == names[1]
    return False


def load_model_for(
    path: str | os.PathLike,
    *,
    role: str,
    dataset: str | None,
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    map_location: Any = "cpu",
    arch: str | Mapping | None = None,
) -> nn.Module:
    """`load_model` for a command's option (`role`, e.g. "--teacher"), checked against the data it will see:
    the class count and channels, and, where the project's own files record them, the data set and the image
    size it was trained on (and `arch` when given). Every error is one line naming the option and the fix.
    The file's record is kept as `model.meta` ({} for foreign files); with `image_size` None the size is left
    for `check_image_size` once the images are loaded; with `dataset` None the recorded data set is not
    checked."""
    obj = read_checkpoint(path, map_location)  # read once: the record, then the weights
    meta = obj.get("meta") if isinstance(obj, Mapping) and obj.get("format") == MODEL_FORMAT else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    if dataset is not None and meta.get("dataset") and not same_dataset(meta["dataset"], dataset):
        raise ZsktError(
            f"{role} {path} was trained on {meta['dataset']}, not {dataset}; pass --dataset "
            f"{meta['dataset']} or a network trained on {dataset}"
        )
    try:
        model = _model_from(
            obj, Path(path), arch, num_classes=num_classes, in_channels=in_channels, map_location=map_location
        )
    except ZsktError as e:
        data = f"{dataset}: " if dataset is not None else ""
        raise ZsktError(f"{role}: {e} ({data}{num_classes} classes, {in_channels}-channel images)") from None
    model.meta = meta
    if image_size is not None:
        check_image_size(model, role, path, image_size)
    return model


def check_image_size(model: nn.Module, role: str, path: str | os.PathLike, image_size: int) -> None:
    """Refuse images of another size than the network's file records it was trained on (project files)."""
    trained = getattr(model, "meta", {}).get("image_size")
    if trained and trained != image_size:
        raise ZsktError(
            f"{role} {path} was trained on {trained}x{trained} images, these are "
            f"{image_size}x{image_size}; pass --image-size {trained}"
        )


# ---------------------------------------------------------------------------------------------- generators


def load_generator(
    path: str | os.PathLike, map_location: Any = "cpu", *, trust: bool | None = None
) -> Generator:
    """Rebuild a Generator from a ``zskt-generator`` file or an authors' zero-shot file, loaded strictly.

    From an authors' file the weights are ``generator_state_dict`` with the LearnableLoader's ``generator.``
    prefix dropped; z_dim, image size, output channels and the final BN's affinity are read from the shapes.
    The generator is returned in train mode: the authors only ever run it with batch statistics.
    """
    path = Path(path)
    obj = read_checkpoint(path, map_location, trust)
    state, recorded = _unpack(
        obj,
        path,
        own=GENERATOR_FORMAT,
        other=MODEL_FORMAT,
        other_is="a Wide ResNet, expected a generator (use load_model)",
        keys=("generator_state_dict",),
        what="generator",
    )
    state = _strip_prefixes(state, _WRAPPER_PREFIXES + ("generator.",))
    if recorded is not None:
        keys = ("z_dim", "image_size", "out_channels", "final_bn_affine")
        if recorded.get("family") != "generator" or any(key not in recorded for key in keys):
            raise ZsktError(f"checkpoint {path} records arch {dict(recorded)!r}; expected a 'generator' arch")
        found = {key: recorded[key] for key in keys}
    else:
        found = infer_generator_arch(state, source=path)
    generator = Generator(**found)
    _load_strict(generator, state, path, "the generator " + _few([f"{k}={v}" for k, v in found.items()], 4))
    if isinstance(map_location, (str, torch.device)):
        generator = generator.to(map_location)
    return generator.train()


def infer_generator_arch(state_dict: Mapping[str, torch.Tensor], source: Any = "state_dict") -> dict:
    """z_dim, image_size, out_channels and final_bn_affine of the generator whose weights these are."""
    absent = [key for key in ("layers.0.weight", "layers.11.weight") if key not in state_dict]
    if absent:
        raise ZsktError(
            f"checkpoint {source} does not hold a generator (no {', '.join(absent)}; "
            f"found keys {_few(list(state_dict))}); expected the generator's keys as zskt and the authors' "
            "code name them (layers.0 ... layers.11)"
        )
    features, z_dim = state_dict["layers.0.weight"].shape  # Linear(z_dim -> 128 * s * s)
    side = round((features / 128) ** 0.5)
    if 128 * side * side != features:
        raise ZsktError(
            f"checkpoint {source} has a generator seed layer of {features} features; "
            "expected 128 * s * s for a square s x s seed map"
        )
    return {
        "z_dim": z_dim,
        "image_size": 4 * side,
        "out_channels": state_dict["layers.11.weight"].shape[0],
        "final_bn_affine": "layers.12.weight" in state_dict,
    }


# ---------------------------------------------------------------------------------------------- shared


def _check_version(obj: Mapping, path: Path) -> None:
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise ZsktError(
            f"checkpoint {path} is {obj.get('format')} version {version}; expected version {FORMAT_VERSION}"
        )


def _strip_prefixes(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict:
    # Strip a prefix only when every key has it, so a real module named like a prefix is left alone.
    state = dict(state)
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in prefixes:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                stripped = True
    return state


def _load_strict(module: nn.Module, state: dict, path: Path, label: str) -> None:
    # Compare keys and shapes first so the error is one line naming the keys; load_state_dict's own message
    # spans many lines. A missing num_batches_tracked is not an error: files from PyTorch < 0.4.1 lack it and
    # BatchNorm fills it in (without per-module version metadata, which the key handling here drops).
    expected = module.state_dict()
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_few(missing)}"] if missing else []) + (
            [f"unexpected keys {_few(unexpected)}"] if unexpected else []
        )
        raise ZsktError(f"checkpoint {path} does not match {label}: {'; '.join(parts)}")
    for key, value in expected.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise ZsktError(
                f"checkpoint {path} does not match {label}: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ZsktError(f"checkpoint {path} does not match {label} ({_reason(err)})") from err


def _few(items: list, limit: int = 3) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown or "none"
