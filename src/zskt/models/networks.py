"""Any network as a teacher or student: `resolve_network(spec, ...)` turns an option's text into a network.

The forms of `--teacher` / `--student` (docs/own_models_and_data.md):

- a registered name (`zskt list`) or any `wrn-DEPTH-WIDTH`: a freshly initialised network (students only);
- a file: a network file `load_model` reads (the project's, the authors', the Ferles reproduction's, the
  zju-vipa DataFree teachers); with trust, also a whole pickled network (`torch.save(model)`) and a project
  file holding an external network's weights (rebuilt by importing the `module:callable` it records);
- `module:callable` or `path/to/file.py:callable`: an importable factory (or nn.Module class), called with
  `num_classes=` and `in_channels=` where its signature takes them;
- `timm:NAME`: `timm.create_model(NAME, num_classes=..., in_chans=...)` where timm is installed (the optional
  extra `zskt[timm]`), never pretrained (that would download).

In Python, an `nn.Module` itself is accepted as the spec. Every problem is a one-line ZsktError naming the
option (`role`) and the fix, raised before a run folder is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zskt.errors import ZsktError
from zskt.models.checkpoints import (
    MODEL_FORMAT,
    _load_strict,
    _reason,
    check_image_size,
    load_model_for,
)
from zskt.models.registry import build_model, canonical_name, is_model_name, model_names_hint

FORMS = (
    "a registered name (zskt list), wrn-DEPTH-WIDTH, a network file, module:callable, "
    "path/to/file.py:callable "
    "or timm:NAME"
)


def resolve_network(
    spec: str | os.PathLike | nn.Module,
    *,
    role: str,
    num_classes: int,
    in_channels: int,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    trust: bool = False,
    trained: bool = False,
    dataset: str | None = None,
) -> nn.Module:
    """The network `spec` names, on `device`, checked against the data it will see.

    `role` names the option in errors ("--teacher"). `trained` (teachers): a bare name, which would build
    an untrained network, is refused. `dataset`: a project file's recorded data set must be this one.
    `trust` allows whole pickled networks and external-network files (both run code named by the file).
    With `image_size`, the network is run once on a batch of two blank images (eval mode, no gradients):
    a network that cannot take images of that size, or gives another number of outputs than `num_classes`,
    is refused here (`check_network`). Where the images' size is not known yet, call `check_network` later.

    The result's forward is the network's own (logits, or `(logits, maps)` for a Wide ResNet); wrap it with
    `zskt.models.with_features` for the methods' `(logits, maps)` contract. `model.meta` holds a project
    file's record ({} otherwise).
    """
    model = _resolve(
        spec,
        role=role,
        num_classes=num_classes,
        in_channels=in_channels,
        device=device,
        trust=trust,
        trained=trained,
        dataset=dataset,
    )
    if not hasattr(model, "meta"):
        model.meta = {}
    model = model.to(device)
    if image_size is not None:
        check_image_size(model, role, spec, image_size)  # a project file records the size it was trained at
        check_network(
            model,
            role=role,
            spec=spec,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )
    return model


def _resolve(
    spec: Any,
    *,
    role: str,
    num_classes: int,
    in_channels: int,
    device: Any,
    trust: bool,
    trained: bool,
    dataset: str | None,
) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    text = str(spec).strip()
    if not text:
        raise ZsktError(f"{role} is empty; expected {FORMS}")
    if text.lower().startswith("timm:"):
        return build_timm(text[5:], role=role, num_classes=num_classes, in_channels=in_channels)
    if Path(text).is_file():
        return _from_file(
            Path(text),
            role=role,
            num_classes=num_classes,
            in_channels=in_channels,
            device=device,
            trust=trust,
            dataset=dataset,
        )
    if ":" in text:
        return build_from_callable(text, role=role, num_classes=num_classes, in_channels=in_channels)
    if is_model_name(text):
        if trained:
            name = canonical_name(text)
            raise ZsktError(
                f"{role} {text} names an untrained network; pass a trained network file (zskt train "
                f"--model {name} writes one), a module:callable that loads its weights, or a "
                "whole saved network with --trust-checkpoint"
            )
        return build_model(text, num_classes, in_channels)
    if Path(text).exists():
        raise ZsktError(f"{role} {text} is a folder; expected a network file or {FORMS}")
    looks_like_file = os.sep in text or "/" in text or Path(text).suffix in (".pt", ".pth", ".tar", ".pkl")
    if looks_like_file:
        raise ZsktError(
            f"{role} {text} not found; expected a network file (a model.pt from zskt train, or a "
            "published teacher)"
        )
    raise ZsktError(
        f"{role}: unknown network {text!r}; expected one of {model_names_hint()}, a network file, "
        "module:callable or timm:NAME"
    )


# ----------------------------------------------------------------------------------------------------- files


def _from_file(
    path: Path,
    *,
    role: str,
    num_classes: int,
    in_channels: int,
    device: Any,
    trust: bool,
    dataset: str | None,
) -> nn.Module:
    if trust:
        obj = load_trusted(path, role=role, map_location=device)
        if isinstance(obj, nn.Module):
            return obj
        if (
            isinstance(obj, Mapping)
            and obj.get("format") == MODEL_FORMAT
            and isinstance(obj.get("arch"), Mapping)
            and obj["arch"].get("family") == "external"
        ):
            return _external_from_record(
                obj, path, role=role, num_classes=num_classes, in_channels=in_channels
            )
    elif _holds_pickled_module(path):  # refused before anything is unpickled
        raise ZsktError(
            f"{role} {path} holds a whole pickled network; loading it runs code the file names: "
            "pass --trust-checkpoint if you trust the file, or save its state_dict instead"
        )
    try:
        return load_model_for(
            path,
            role=role,
            dataset=dataset,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=None,
            map_location=device,
        )
    except ZsktError as e:
        message = str(e)
        raise ZsktError(message if message.startswith(role) else f"{role}: {message}") from None


def load_trusted(path: str | os.PathLike, *, role: str = "network", map_location: Any = "cpu") -> Any:
    """`torch.load` with full unpickling, for a file the user trusts (it may run code the file names): whole
    networks saved with `torch.save(model)`. The class of a pickled network must be importable here."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (ImportError, AttributeError) as err:
        raise ZsktError(
            f"{role} {path} could not be unpickled ({_reason(err)}); a whole pickled network needs "
            "the code that defined its class on the Python path"
        ) from None
    except Exception as err:  # truncated, foreign, corrupt
        raise ZsktError(
            f"{role} {path} is not a readable PyTorch file ({_reason(err)}); expected a file "
            "written by torch.save"
        ) from None


def _holds_pickled_module(path: Path) -> bool:
    """Whether a torch.save zip names torch.nn module classes in its pickle (a whole network, not weights)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return bool(names) and b"torch.nn.modules" in archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def _external_from_record(
    obj: Mapping, path: Path, *, role: str, num_classes: int, in_channels: int
) -> nn.Module:
    spec = obj["arch"].get("spec")
    if not spec:
        raise ZsktError(
            f"{role} {path} holds the weights of a {obj['arch'].get('class')} without the "
            "module:callable that builds it; load them in Python with load_state_dict"
        )
    model = build_from_callable(spec, role=role, num_classes=num_classes, in_channels=in_channels)
    _load_strict(model, dict(obj["state_dict"]), path, spec)
    return model.eval()


# ------------------------------------------------------------------------------------------ module:callable


def build_from_callable(spec: str, *, role: str, num_classes: int, in_channels: int) -> nn.Module:
    """The network `module:callable` (or `path/to/file.py:callable`) builds.

    The callable gets `num_classes=` and `in_channels=` where its signature takes them (by name or through
    **kwargs); dotted attributes (`nets:Zoo.small`) are followed. A module name is imported with the current
    folder on the path as well, as `python -m` would; a file is imported under a name of its own.
    """
    target, _, attr = str(spec).strip().rpartition(":")
    if not target or not attr:
        raise ZsktError(f"{role} {spec}: expected module:callable or path/to/file.py:callable")
    module = _import(target, spec=spec, role=role)
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            shown = ", ".join(public[:8]) + (" ..." if len(public) > 8 else "")
            raise ZsktError(
                f"{role} {spec}: {target} has no attribute {attr!r}; its callables are {shown or 'none'}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise ZsktError(
            f"{role} {spec}: {attr} is a {type(factory).__name__}, not a callable that builds a network"
        )
    kwargs = _accepted(factory, num_classes=num_classes, in_channels=in_channels)
    try:
        model = factory(**kwargs)
    except ZsktError:
        raise
    except Exception as err:
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ZsktError(f"{role} {spec}: calling {attr}({given}) failed ({_reason(err)})") from None
    if not isinstance(model, nn.Module):
        raise ZsktError(
            f"{role} {spec}: {attr}() returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _import(target: str, *, spec: str, role: str) -> Any:
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    try:
        if is_file:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ZsktError(f"{role} {spec}: no file {target}; expected path/to/file.py:callable")
            name = "zskt_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            if name in sys.modules:
                return sys.modules[name]
            found = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(found)
            sys.modules[name] = module  # so that dataclasses and pickling inside it find their module
            try:
                with _on_path(str(path.parent)):  # its own imports of neighbouring files work
                    found.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return module
        with _on_path(os.getcwd()):
            return importlib.import_module(target)
    except ZsktError:
        raise
    except ModuleNotFoundError as err:
        raise ZsktError(
            f"{role} {spec}: cannot import {target} ({_reason(err)}); check the name and that its "
            "folder is on PYTHONPATH, or give a file: path/to/file.py:callable"
        ) from None
    except Exception as err:
        raise ZsktError(f"{role} {spec}: importing {target} failed ({_reason(err)})") from None


@contextlib.contextmanager
def _on_path(folder: str):
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _accepted(factory: Any, **values: Any) -> dict:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass the class count only
        return {"num_classes": values["num_classes"]}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    return {
        k: v
        for k, v in values.items()
        if k in params and params[k].kind is not inspect.Parameter.POSITIONAL_ONLY
    }


# ------------------------------------------------------------------------------------------------------ timm


def build_timm(name: str, *, role: str, num_classes: int, in_channels: int) -> nn.Module:
    """`timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`, where timm is installed."""
    name = name.strip()
    if not name:
        raise ZsktError(
            f"{role} timm: needs a model name, e.g. timm:resnet18 (timm.list_models() lists them)"
        )
    try:
        import timm
    except ImportError:
        raise ZsktError(
            f"{role} timm:{name} needs timm, which is not installed; pip install 'zskt[timm]'"
        ) from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as err:
        raise ZsktError(
            f"{role} timm:{name}: timm could not build it ({_reason(err)}); timm.list_models() lists "
            "the names"
        ) from None
    if not isinstance(model, nn.Module):
        raise ZsktError(
            f"{role} timm:{name}: timm returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


# ------------------------------------------------------------------------------------------------ the probe


@torch.no_grad()
def check_network(
    model: nn.Module, *, role: str, spec: Any, num_classes: int, in_channels: int, image_size: int
) -> None:
    """Run `model` once on two blank images of the data's size (eval mode, no gradients, its mode restored)
    and refuse, in one line, a network that cannot take them or gives other than `num_classes` outputs."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shape = f"{in_channels}x{image_size}x{image_size}"
    label = spec if isinstance(spec, (str, os.PathLike)) else type(spec).__name__
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, in_channels, image_size, image_size, device=device))
    except ZsktError:
        raise
    except Exception as err:
        raise ZsktError(
            f"{role} {label} cannot take {shape} images ({_reason(err)}); pass a network for such "
            "images, or images of the size it takes (--image-size where the data set has it)"
        ) from None
    finally:
        model.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) and out else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ZsktError(
            f"{role} {label} returns {got} for a batch of 2 images; expected logits of shape "
            "(batch, classes), or a tuple (logits, feature_maps)"
        )
    if logits.shape[1] != num_classes:
        raise ZsktError(
            f"{role} {label} gives {logits.shape[1]} outputs per image, the data has {num_classes} "
            f"classes; use a network built for {num_classes} classes (a factory taking num_classes= "
            "gets it) or the data set it was trained on"
        )


def network_label(model: nn.Module, spec: Any) -> str:
    """A short name for run ids and tables: the registered name, else the callable's or timm's name, else the
    class name."""
    while getattr(model, "wraps_network", False):  # the feature wrapper (models/features.py)
        model = model.module
    arch = model.arch() if hasattr(model, "arch") and callable(model.arch) else {}
    if isinstance(arch, Mapping) and arch.get("name"):
        return str(arch["name"])
    text = str(spec) if isinstance(spec, (str, os.PathLike)) else ""
    if text.lower().startswith("timm:"):
        return "timm-" + text[5:].strip()
    if ":" in text and not Path(text).is_file():
        return text.rpartition(":")[2]
    return type(model).__name__.lower()
